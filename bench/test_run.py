"""Unit tests of bench/run.py's pure parts: output parsing, the perf
call-stack buckets, interleaved-round statistics, the open-loop rates and
callgrind's dumps (totals, per-thread files, per-request arithmetic), and
how the instruction run shares Envoys between variants.
Run by `make test-unit` (python -m unittest discover -s bench)."""

import math
import tempfile
import unittest
from pathlib import Path

import run

ENVOY = "(/opt/envoy/_bin/envoy)"
JIT = "(/tmp/perf-4242.map)"
KERNEL = "([kernel.kallsyms])"
LIBC = "(/usr/lib/x86_64-linux-gnu/libc.so.6)"


def stack(*dsos):
    return "\n".join(f"\t    {0x1000 + i:x} {dso}" for i, dso in enumerate(dsos))


class PerfBuckets(unittest.TestCase):
    def test_the_leaf_and_what_is_below_it_pick_the_bucket(self):
        self.assertEqual(run.classify_stack([JIT, ENVOY, ENVOY]), "wasm")
        self.assertEqual(run.classify_stack([ENVOY, ENVOY, JIT, ENVOY]), "host")
        self.assertEqual(run.classify_stack([ENVOY, ENVOY, LIBC]), "envoy")
        self.assertEqual(run.classify_stack([KERNEL, LIBC, ENVOY, JIT]), "kernel")
        self.assertEqual(run.classify_stack([LIBC, ENVOY]), "other")
        self.assertIsNone(run.classify_stack([]))

    def test_samples_are_split_on_blank_lines(self):
        output = "\n\n".join(
            [stack(JIT, ENVOY), stack(ENVOY, JIT, ENVOY), stack(ENVOY, ENVOY), stack(ENVOY), stack(KERNEL, ENVOY)]
        )
        self.assertEqual(
            run.profile_buckets(output + "\n\n"),
            {"wasm": 1, "host": 1, "envoy": 2, "kernel": 1, "other": 0},
        )


class Rounds(unittest.TestCase):
    def test_quartiles_of_short_and_long_lists(self):
        self.assertEqual(run.quartiles([5.0]), (5.0, 5.0, 5.0))
        self.assertEqual(run.quartiles([3.0, 1.0, 2.0]), (1.0, 2.0, 3.0))
        low, middle, high = run.quartiles([float(n) for n in range(1, 10)])
        self.assertEqual(middle, 5.0)
        self.assertLess(low, middle)
        self.assertGreater(high, middle)

    def test_added_cost_and_ratio_are_computed_within_each_round(self):
        empty = run.Variant("empty", "", [])
        native = run.Variant("native", "", [])
        filt = run.Variant("filter", "", [], native="native")
        # The machine drifts by 40 µs between rounds; within a round the
        # filter adds twice what native adds.
        per_round = {
            "empty": [40.0, 80.0, 40.0, 80.0],
            "native": [50.0, 90.0, 50.0, 90.0],
            "filter": [60.0, 100.0, 60.0, 100.0],
        }
        summary = run.round_summary([empty, native, filt], per_round)
        self.assertNotIn("empty", summary)
        self.assertEqual(summary["filter"]["added"][1], 20.0)
        self.assertEqual(summary["filter"]["x_native"], (2.0, 2.0, 2.0))
        self.assertEqual(summary["filter"]["rounds"], 4)
        self.assertIsNone(summary["native"]["x_native"])

    def test_the_ratio_over_the_noop_floor_needs_the_noop_variant(self):
        empty = run.Variant("empty", "", [])
        noop = run.Variant("noop-wasm", "", [])
        native = run.Variant("native", "", [])
        filt = run.Variant("filter", "", [], native="native")
        per_round = {"empty": [40.0, 80.0], "native": [50.0, 90.0], "filter": [70.0, 110.0]}
        self.assertIsNone(run.round_summary([empty, native, filt], per_round)["filter"]["x_native_over_floor"])
        per_round["noop-wasm"] = [55.0, 95.0]
        summary = run.round_summary([empty, noop, native, filt], per_round)
        self.assertEqual(summary["filter"]["x_native"], (3.0, 3.0, 3.0))
        self.assertEqual(summary["filter"]["x_native_over_floor"], (1.5, 1.5, 1.5))

    def test_rounds_where_native_adds_nothing_give_no_ratio(self):
        empty = run.Variant("empty", "", [])
        native = run.Variant("native", "", [])
        filt = run.Variant("filter", "", [], native="native")
        per_round = {"empty": [40.0, 40.0], "native": [39.0, 50.0], "filter": [60.0, 60.0]}
        summary = run.round_summary([empty, native, filt], per_round)
        self.assertEqual(summary["filter"]["x_native"], (2.0, 2.0, 2.0))


class Parsing(unittest.TestCase):
    WRK = """Running 4s test @ http://127.0.0.1:10000/charge
  1 threads and 16 connections
  Latency Distribution
     50%  845.00us
     90%    1.38ms
     99%    2.10ms
  61234 requests in 4.00s, 5.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  15308.50
"""

    def test_wrk_output(self):
        result = run.parse_wrk(self.WRK)
        self.assertEqual(result["rps"], 15308.5)
        self.assertEqual(result["p50_us"], 845.0)
        self.assertEqual(result["p90_us"], 1380.0)
        self.assertEqual(result["p99_us"], 2100.0)
        self.assertEqual(result["non_2xx"], 3)
        self.assertEqual(result["socket_errors"], 0)

    def test_loadgen_report_counts_unsent_requests_as_errors(self):
        result = run.parse_loadgen(
            '{"latency_us": {"p50": 800, "p90": 1200, "p99": 2000}, "achieved_rps": 999.5,'
            ' "non_2xx": 0, "errors": 1, "unsent": 4}'
        )
        self.assertEqual(result["p99_us"], 2000)
        self.assertTrue(math.isnan(result["p999_us"]))
        self.assertEqual(result["errors"], 5)
        self.assertEqual(result["achieved_rps"], 999.5)

    def test_open_loop_rates_follow_the_slowest_ceiling_without_miss_variants(self):
        fast = run.Variant("fast", "", [])
        slow = run.Variant("slow", "", [])
        miss = run.Variant("miss", "", [], unique_tokens=True)
        rows = {"fast": {"rps": 20000.0}, "slow": {"rps": 8000.0}, "miss": {"rps": 900.0}}
        settings = {"open_rates": [], "open_load": [25, 50, 75]}
        self.assertEqual(run.open_loop_rates([fast, slow, miss], rows, settings), ([2000, 4000, 6000], "slow"))
        settings["open_rates"] = [1000]
        self.assertEqual(run.open_loop_rates([fast], rows, settings), ([1000], None))


DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 25807
cmd:  /opt/envoy -c /tmp/routing.json --concurrency 1
part: 2
thread: 7

desc: Trigger: dump

positions: line
events: Ir
summary: 77766750


ob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
fn=(1624) readv
26 1600

totals: 77766751
"""


class Callgrind(unittest.TestCase):
    def test_the_totals_line_wins_over_the_summary(self):
        self.assertEqual(run.callgrind_total(DUMP), 77766751)
        self.assertEqual(run.callgrind_total(DUMP.replace("totals: 77766751\n", "")), 77766750)

    def test_the_instruction_column_is_picked_among_several_events(self):
        text = DUMP.replace("events: Ir", "events: Dr Ir Dw").replace("totals: 77766751", "totals: 5 900 7")
        self.assertEqual(run.callgrind_total(text), 900)

    def test_a_dump_without_totals_is_refused(self):
        with self.assertRaises(ValueError):
            run.callgrind_total("# callgrind format\nevents: Ir\n")

    def test_dump_files_are_picked_by_dump_number_per_thread(self):
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory) / "authz.callgrind"
            names = ["authz.callgrind.1-01", "authz.callgrind.1-07", "authz.callgrind.2-07",
                     "authz.callgrind.12-03", "authz.callgrind-07", "authz.callgrind", "routing.callgrind.1-02"]
            for name in names:
                (Path(directory) / name).write_text("")
            self.assertEqual(run.dump_files(out, 1), {1: out.with_name("authz.callgrind.1-01"),
                                                      7: out.with_name("authz.callgrind.1-07")})
            self.assertEqual(run.dump_files(out, 2), {7: out.with_name("authz.callgrind.2-07")})
            self.assertEqual(run.dump_files(out, 3), {})

    def test_the_worker_is_the_busiest_thread_present_in_both_dumps(self):
        first = {1: 23239, 2: 2713, 5: 8171, 7: 38895530}
        second = {1: 38734, 2: 2711, 5: 11415, 7: 77766750, 8: 90000000}
        self.assertEqual(run.busiest_thread(first, second), 7)

    def test_per_request_figures_and_their_agreement(self):
        # 500 requests at 1,000 instructions, then 1,000 at 1,005.
        total, one, two, difference = run.per_request(500 * 1000, 1000 * 1005, 500)
        self.assertEqual((one, two), (1000, 1005))
        self.assertAlmostEqual(total, (500_000 + 1_005_000) / 1500)
        self.assertAlmostEqual(difference, 0.005)
        self.assertLessEqual(difference, run.INSTR_AGREEMENT)
        self.assertGreater(run.per_request(500 * 1000, 1000 * 1030, 500)[3], run.INSTR_AGREEMENT)

    def test_added_ratio_to_native_and_host_call_prices(self):
        empty = run.Variant("empty", "", [])
        native = run.Variant("native", "", [])
        filt = run.Variant("filter", "", [], native="native")
        counts = {name: {"instructions": value} for name, value in
                  (("empty", 100_000.0), ("native", 130_000.0), ("filter", 175_000.0),
                   ("price-get_header-1", 130_000.0), ("price-get_header-20", 320_000.0))}
        run.summarise_instructions([empty, native, filt], counts)
        self.assertEqual(counts["filter"]["added"], 75_000.0)
        self.assertEqual(counts["filter"]["x_native"], 2.5)
        self.assertTrue(math.isnan(counts["native"]["x_native"]))
        prices = run.instruction_prices(counts, 20)
        self.assertEqual([row["op"] for row in prices], ["get_header"])
        self.assertEqual(prices[0]["per_call"], 10_000.0)


def wasm_variant(name, *vms, unique_tokens=False):
    """A variant with one wasm filter per (module, vm_id)."""
    filters = [run.wasm_filter(f"f{index}", "", Path(module), None, vm_id=vm_id) for index, (module, vm_id) in enumerate(vms)]
    return run.Variant(name, "", filters, unique_tokens=unique_tokens)


class SharedEnvoys(unittest.TestCase):
    def test_filters_of_one_module_and_vm_id_share_a_vm(self):
        variant = wasm_variant("v", ("a.wasm", None), ("a.wasm", None), ("a.wasm", "x"), ("b.wasm", None))
        variant.filters.append(run.lua_noop_filter())
        self.assertEqual(run.wasm_vms(variant), {("a.wasm", ""), ("a.wasm", "x"), ("b.wasm", "")})

    def test_no_group_holds_more_vms_than_valgrind_has_room_for(self):
        variants = [
            run.Variant("empty", "", []),
            wasm_variant("noop", ("noop.wasm", None)),
            wasm_variant("four-vms", *((("noop.wasm", f"n{i}")) for i in range(4))),
            wasm_variant("authz", ("authz.wasm", None)),
            wasm_variant("chain", ("authz.wasm", None), ("routing.wasm", None), ("telemetry.wasm", None),
                         ("breaker.wasm", None)),
            wasm_variant("authz-miss", ("authz.wasm", None), unique_tokens=True),
            run.Variant("native", "", [run.lua_noop_filter()]),
        ]
        groups = run.instruction_groups(variants)
        self.assertEqual(sorted(v.name for group in groups for v in group), sorted(v.name for v in variants))
        for group in groups:
            self.assertLessEqual(len(set().union(*(run.wasm_vms(v) for v in group))), run.INSTR_MAX_VMS)
        self.assertEqual([[v.name for v in group] for group in groups],
                         [["empty", "noop", "authz", "authz-miss", "native"], ["four-vms"], ["chain"]])
        self.assertEqual(run.instruction_work(groups[0]), 4 + run.INSTR_MISS_WEIGHT)

    def test_each_variant_gets_a_listener_and_plugins_of_its_own(self):
        shared = run.wasm_filter("authz", "authz", Path("authz.wasm"), {"rules": []})
        alone, chain = run.Variant("authz", "", [shared]), run.Variant("chain", "", [shared, run.lua_noop_filter()])
        config = run.bootstrap([alone, chain], [12001, 12002], 12000)
        listeners = config["static_resources"]["listeners"]
        self.assertEqual([(l["name"], l["address"]["socket_address"]["port_value"]) for l in listeners],
                         [("authz", 12001), ("chain", 12002)])

        def plugin_names(listener):
            manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
            return [f["typed_config"].get("config", {}).get("name") for f in manager["http_filters"]]

        self.assertEqual(plugin_names(listeners[0]), ["authz/authz", None])
        self.assertEqual(plugin_names(listeners[1]), ["chain/authz", None, None])
        self.assertEqual(shared["typed_config"]["config"]["name"], "authz", "the variant's own filters are untouched")
        # A lone variant (the timed phases) keeps its names.
        lone = run.bootstrap([alone], [12001], 12000)["static_resources"]["listeners"]
        self.assertEqual(plugin_names(lone[0]), ["authz", None])


if __name__ == "__main__":
    unittest.main()
