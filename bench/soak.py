#!/usr/bin/env python3
"""`make soak`: the four filters from the combined module on one Envoy for
SOAK_REQUESTS (default 1,000,000) mixed requests, watching Envoy's memory
and its stats for growth.

The Envoy is bench/run.py's (`meshwasm-chain-one-module`: the manifests'
configs, authz with the demo JWKS inline, Istio's filter order), with
Istio's sidecar concurrency of 2 workers and two additions: `POST /charge`
answers 503 while the request's `x-soak-fail-phase` header is `0` (the
first 20,000 of every 100,000 requests), so the breaker's `payment` policy
trips and recovers again and again; and a second breaker policy keyed by
the `x-tenant-id` of `/orders` requests, with a short `idle_expiry`
(SOAK_BREAKER_IDLE_EXPIRY, default 5s), so that a new tenant per request
churns breaker keys through `max_keys` and expiry.

bench/loadgen sends the mix of SOAK_MIX (bench/soak-mix.tsv) open loop at
SOAK_RATE req/s (default 2500), in SOAK_SAMPLES segments (default 20); after each, this samples Envoy's
RSS (/proc), its heap (admin /memory: tcmalloc's allocated bytes; V8 and
the wasm linear memories live outside it, in RSS minus heap), its wasm VM
stats and the number of series in /stats/prometheus. Every request's
answer is counted per kind; an answer outside its kind's expected statuses,
or a transport error, is an error.

Fails (exit 1) when, after warm-up (the first SOAK_WARMUP_PERCENT of the
requests, default 20):
- memory keeps growing: the least-squares line through the RSS samples of
  the last half of the run rises by more than SOAK_RSS_MARGIN_MB (default
  16) across that half, or the final RSS exceeds the first post-warm-up
  sample by more than twice that; likewise for RSS minus heap (V8/wasm);
- the series count is unbounded: the last half of the run adds more than
  1 % new series;
- any request got an unexpected answer or a transport error.

Writes soak.json and soak.md to bench-results/soak-<time>/ and prints the
table. One million requests took 11 minutes on a loaded 2-core machine (plus a
minute minting tokens); SOAK_REQUESTS=50000 is a quick run.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: configs, tokens, Envoy)

MIX = Path(__file__).resolve().parent / "soak-mix.tsv"
# Statuses each kind of the mix may answer; anything else is an error.
EXPECTED = {
    "order-read": {200},
    "order-read-new-token": {200},
    "order-create-new-tenant": {200},
    "charge": {200, 503},
    "no-token": {401},
    "bad-token": {401},
    "forbidden-delete": {403},
    "unknown-path": {403},
    "hostile-path": {403},
    "hostile-bytes": {200},
    "huge-header": {200},
}
SOAK_POLICY = {
    "name": "soak-tenant",
    "match": {"paths": ["/orders*"]},
    "key": [{"source": "header", "name": "x-tenant-id"}],
    "trip": {"consecutive_failures": 5},
    "failure": {"server_errors": True},
    "open": {"duration": "2s"},
}


def log(message):
    print(message, file=sys.stderr, flush=True)


def soak_variant(dist, jwks):
    """bench/run.py's one-module chain, with the soak's breaker policy."""
    module = dist / "meshwasm.wasm"
    authz_root, authz_config, _ = bench.authz_plugin(jwks)
    filters = [bench.wasm_filter("authz", authz_root, module, authz_config)]
    for name in ("routing", "telemetry", "circuit-breaker"):
        root_id, config = bench.manifest_plugin(name)
        if name == "circuit-breaker":
            config["policies"] = config.get("policies", []) + [SOAK_POLICY]
            config["idle_expiry"] = os.environ.get("SOAK_BREAKER_IDLE_EXPIRY", "5s")
        filters.append(bench.wasm_filter(name, root_id, module, config))
    return bench.Variant("soak", "four filters from dist/meshwasm.wasm", filters)


def add_failing_charge_route(config):
    """The route that fails the charge, before bench/run.py's route."""
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    routes.insert(
        0,
        {
            "match": {
                "path": "/charge",
                "headers": [{"name": "x-soak-fail-phase", "string_match": {"exact": "0"}}],
            },
            "direct_response": {"status": 503, "body": {"inline_string": "payment down"}},
        },
    )


def admin_text(envoy, path):
    status, body = bench.http_get(f"http://127.0.0.1:{envoy.admin_port}{path}", timeout=10.0)
    if status != 200:
        raise RuntimeError(f"admin {path} answered {status}")
    return body


def sample(envoy, requests, elapsed):
    memory = json.loads(admin_text(envoy, "/memory"))
    series = sum(
        1 for line in admin_text(envoy, "/stats/prometheus").splitlines() if line and not line.startswith("#")
    )
    wasm = {}
    for line in admin_text(envoy, "/stats?filter=^wasm").splitlines():
        name, _, value = line.partition(": ")
        if re.search(r"\.(active|created)$", name) and "runtime" in name:
            wasm[name] = int(value)
    rss = bench.rss_mb(envoy.pid)
    heap = int(memory["allocated"]) / 2**20
    return {
        "requests": requests,
        "elapsed_s": round(elapsed, 1),
        "rss_mb": round(rss, 1),
        "heap_mb": round(heap, 1),
        "outside_heap_mb": round(rss - heap, 1),
        "series": series,
        "wasm": wasm,
    }


# Counters that show the mix did what it is for: breaker trips and
# recoveries, keys past max_keys, tenants folded into `other`, token cache
# hits and misses.
FILTER_COUNTERS = (
    "meshwasm_breaker_trips_total",
    "meshwasm_breaker_half_open_probes_total",
    "meshwasm_breaker_untracked_total",
    "meshwasm_telemetry_folded_values_total",
    "meshwasm_authz_token_cache_total",
)


def filter_counters(envoy):
    """Each of FILTER_COUNTERS summed over its tags, split by `result` when it has one."""
    totals = {}
    text = admin_text(envoy, "/stats?filter=" + "|".join(FILTER_COUNTERS))
    for line in text.splitlines():
        name, _, value = line.rpartition(": ")
        metric = next((m for m in FILTER_COUNTERS if name.endswith(m)), None)
        if metric is None or not value.strip().isdigit():
            continue
        result = re.search(r"result=\.=([a-z]+);", name)
        key = f"{metric}{{result={result.group(1)}}}" if result else metric
        totals[key] = totals.get(key, 0) + int(value)
    return totals


def series_by_family(envoy, top=8):
    """The metric families with the most series in /stats/prometheus."""
    counts = {}
    for line in admin_text(envoy, "/stats/prometheus").splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            # Without tag extraction rules, a filter metric's tags are part of its name.
            name = name[name.index("meshwasm_"):] if "meshwasm_" in name else name
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            counts[family] = counts.get(family, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])[:top]


def run_segment(loadgen, envoy, mix, first, count, rate, connections, tokens_file):
    seconds = count / rate
    argv = [
        str(loadgen), "--port", str(envoy.listen_port), "--rate", str(rate),
        "--connections", str(connections), "--duration", f"{seconds:.6f}",
        "--requests-file", str(mix), "--first", str(first), "--tokens-file", str(tokens_file),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout)


def rise(samples, key):
    """How much the least-squares line through `samples` rises from the
    first to the last sample's request count."""
    xs = [s["requests"] for s in samples]
    ys = [s[key] for s in samples]
    if len(xs) < 2 or xs[-1] == xs[0]:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return slope * (xs[-1] - xs[0])


def verdicts(samples, warmup_requests, margin_mb, kinds, transport_errors):
    """(findings, failures): the figures judged, and what failed."""
    settled = [s for s in samples if s["requests"] >= warmup_requests]
    last_half = settled[len(settled) // 2 :]
    findings, failures = [], []
    for key, what in (("rss_mb", "RSS"), ("outside_heap_mb", "RSS outside Envoy's heap (V8, wasm)")):
        fitted = rise(last_half, key)
        drift = settled[-1][key] - settled[0][key]
        findings.append(
            f"{what}: {settled[0][key]:.1f} MiB after warm-up, {settled[-1][key]:.1f} MiB at the end "
            f"({drift:+.1f}); fitted rise over the last half {fitted:+.1f} MiB (bound {margin_mb} MiB)"
        )
        if fitted > margin_mb or drift > 2 * margin_mb:
            failures.append(f"{what} keeps growing after warm-up ({fitted:+.1f} MiB fitted, {drift:+.1f} MiB drift)")
    half = last_half[0]["series"]
    added = samples[-1]["series"] - half
    findings.append(f"series: {samples[0]['series']} after the first segment, {half} at mid-run, {samples[-1]['series']} at the end")
    if added > max(1, half // 100):
        failures.append(f"series count unbounded: the last half added {added} series ({half} -> {samples[-1]['series']})")
    unexpected = {
        kind: {status: count for status, count in answers["statuses"].items() if int(status) not in EXPECTED[kind]}
        for kind, answers in kinds.items()
    }
    unexpected = {kind: statuses for kind, statuses in unexpected.items() if statuses}
    if unexpected:
        failures.append(f"unexpected answers by kind: {unexpected}")
    if transport_errors:
        failures.append(f"{transport_errors} transport errors")
    return findings, failures


def merge_kinds(total, report):
    for kind, answers in report["kinds"].items():
        entry = total.setdefault(kind, {"statuses": {}, "errors": 0})
        entry["errors"] += answers["errors"]
        for status, count in answers["statuses"].items():
            entry["statuses"][status] = entry["statuses"].get(status, 0) + count


def markdown(settings, samples, kinds, findings, failures, duration_s, achieved):
    lines = [
        f"Soak: {samples[-1]['requests']:,} requests in {duration_s / 60:.1f} min ({achieved:,.0f} req/s achieved, "
        f"target {settings['rate']:,}), Envoy {settings['envoy_version']}, concurrency {settings['concurrency']}",
        "",
        "| requests | min | RSS MiB | heap MiB | outside heap MiB | series |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in samples:
        lines.append(
            f"| {s['requests']:,} | {s['elapsed_s'] / 60:.1f} | {s['rss_mb']:.1f} | {s['heap_mb']:.1f} | "
            f"{s['outside_heap_mb']:.1f} | {s['series']:,} |"
        )
    lines += ["", "| kind | answers | transport errors |", "| --- | --- | ---: |"]
    for kind, answers in kinds.items():
        statuses = ", ".join(f"{status}: {count:,}" for status, count in sorted(answers["statuses"].items()))
        lines.append(f"| {kind} | {statuses} | {answers['errors']} |")
    lines += ["", *[f"- {line}" for line in findings]]
    lines += ["", "PASS" if not failures else "FAIL:\n" + "\n".join(f"- {line}" for line in failures)]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envoy", required=True, type=Path)
    parser.add_argument("--dist", required=True, type=Path)
    parser.add_argument("--loadgen", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=bench.REPO / "bench-results")
    args = parser.parse_args()
    envoy_binary = bench.real_envoy(args.envoy)
    settings = {
        "requests": int(os.environ.get("SOAK_REQUESTS", 1_000_000)),
        "rate": int(os.environ.get("SOAK_RATE", 2500)),
        "connections": int(os.environ.get("SOAK_CONNECTIONS", 32)),
        "samples": int(os.environ.get("SOAK_SAMPLES", 20)),
        "warmup_percent": int(os.environ.get("SOAK_WARMUP_PERCENT", 20)),
        "margin_mb": float(os.environ.get("SOAK_RSS_MARGIN_MB", 16)),
        "concurrency": int(os.environ.get("SOAK_CONCURRENCY", 2)),
        "envoy_version": re.search(
            r"/(\d+\.\d+\.\d+)/", subprocess.run([str(envoy_binary), "--version"], capture_output=True, text=True).stdout
        ).group(1),
    }
    workdir = Path(tempfile.mkdtemp(prefix="meshwasm-soak-"))
    try:
        sys.exit(soak(args, envoy_binary, settings, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def soak(args, envoy_binary, settings, workdir):
    tokens = bench.Tokens(workdir)
    log(f"minting {bench.MISS_TOKENS} distinct tokens (the mix's cache misses)")
    tokens_file = workdir / "tokens"
    tokens_file.write_text("\n".join(tokens.mint(["RS256"], bench.MISS_TOKENS)) + "\n")
    mix = workdir / "mix.tsv"
    mix.write_text(MIX.read_text().replace("HOT_TOKEN", tokens.main))
    variant = soak_variant(args.dist, json.loads(bench.DEMO_JWKS.read_text()))
    envoy = bench.Envoy(
        envoy_binary, [variant], workdir, False, "warning",
        concurrency=settings["concurrency"], edit=add_failing_charge_route, name="soak",
    )
    try:
        envoy.wait_ready()
        status, body = bench.probe(envoy.listen_port, tokens.main)
        if status != 200:
            raise RuntimeError(f"the chain answered {status}, not 200: {body}\n{envoy.log_tail()}")
        segment = max(1000, settings["requests"] // settings["samples"])
        started = time.monotonic()
        samples = [sample(envoy, 0, 0.0)]
        kinds, transport_errors, sent = {}, 0, 0
        while sent < settings["requests"]:
            count = min(segment, settings["requests"] - sent)
            report = run_segment(
                args.loadgen, envoy, mix, sent, count, settings["rate"], settings["connections"], tokens_file
            )
            # Requests a busy connection never sent are sent in the next segment.
            sent += report["sent"]
            transport_errors += report["errors"]
            merge_kinds(kinds, report)
            if envoy.process.poll() is not None:
                raise RuntimeError(f"Envoy exited with {envoy.process.returncode}:\n{envoy.log_tail()}")
            samples.append(sample(envoy, sent, time.monotonic() - started))
            log(f"  {json.dumps(samples[-1])}")
        duration_s = time.monotonic() - started
        findings, failures = verdicts(
            samples[1:], settings["requests"] * settings["warmup_percent"] / 100, settings["margin_mb"], kinds,
            transport_errors,
        )
        counters = filter_counters(envoy)
        findings.append("filter counters: " + ", ".join(f"{name} {value:,}" for name, value in sorted(counters.items())))
        findings.append("most series: " + ", ".join(f"{family} {count:,}" for family, count in series_by_family(envoy)))
        crashes = [line for line in envoy.log_path.read_text(errors="replace").splitlines()
                   if "panicked" in line or "RuntimeError" in line]
        if crashes:
            failures.append(f"{len(crashes)} VM crashes in Envoy's log, first: {crashes[0]}")
    finally:
        envoy.stop()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(settings, samples, kinds, findings, failures, duration_s, samples[-1]["requests"] / duration_s)
    (out / "soak.md").write_text(text)
    (out / "soak.json").write_text(json.dumps(
        {"settings": settings, "samples": samples, "kinds": kinds, "findings": findings, "failures": failures,
         "duration_s": duration_s}, indent=1))
    print(text)
    log(f"written to {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    main()
