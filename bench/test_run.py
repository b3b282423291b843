"""Unit tests of bench/run.py's pure parts: output parsing, the perf
call-stack buckets, interleaved-round statistics and the open-loop rates.
Run by `make test-unit` (python -m unittest discover -s bench)."""

import math
import unittest

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


if __name__ == "__main__":
    unittest.main()
