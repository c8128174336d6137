# Portcullis: the two commands that set it up on a fresh machine are `make demo` and `make test`.
#
#   make deps    install the system packages the build and tests need (apt-get, only when missing)
#   make py      the Python venv of the gRPC and deploy tests (grpcio; check-jsonschema and
#                kubernetes-validate; pinned with hashes), only when missing or changed
#   make node    the tests' OpenID provider (Node's oidc-provider, npm ci from its lock file),
#                only when missing or when the lock changed; checks for Node.js 20.18 or later
#   make demo    deps (without chromium), release build, run `portcullis demo`
#   make test    deps, py, node, every test (lib, integration, benches compiled and smoke-run; the deploy
#                tests render deploy/kubernetes and run kubernetes-validate and check-jsonschema),
#                `check` of config/ and the Kubernetes config,
#                then each fuzz target for FUZZ_SMOKE_SECONDS (5) from its committed seeds
#   make bench   the load benchmark against bare Pingora and HAProxy (release build), with the
#                memory benchmark; writes benches/results/latest.md and latest.svg
#   make check   cargo fmt --check and clippy with warnings as errors
#   make fuzz    every fuzz target for FUZZ_SECONDS each (default 60), or only FUZZ_TARGET=name;
#                new inputs go to fuzz/target/corpus/, crashes to fuzz/artifacts/<target>/

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
# Cargo.lock is committed: build exactly what it pins, and fail if Cargo.toml disagrees with it.
LOCKED ?= --locked
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# Every Portcullis config shipped: `make test` runs `portcullis check` on each.
CONFIGS := $(wildcard config/*.yaml config/*.yml) deploy/kubernetes/portcullis.yaml

# The gRPC tests (tests/it/grpc.rs) run a real gRPC server and client: Python grpcio from
# tests/grpc/requirements.txt (pinned, with hashes, wheels only), in a venv of their own. The
# tests find its python through PORTCULLIS_TEST_PYTHON (set here), or at target/py.
# The deploy tests (tests/it/deploy.rs) run check-jsonschema and kubernetes-validate from the
# same venv (tests/deploy/requirements.txt).
PY_VENV := $(TARGET_DIR)/py
PY_REQUIREMENTS := tests/grpc/requirements.txt tests/deploy/requirements.txt
export PORTCULLIS_TEST_PYTHON := $(abspath $(PY_VENV))/bin/python

# The session tests (tests/it/oidc_harness.rs and those of src/session) start a real OpenID
# provider: Node's oidc-provider, pinned by tests/oidc/package-lock.json, `npm ci` into
# tests/oidc/node_modules. It needs Node.js 20.18 or later: the machine image ships Node 20 at
# /usr/bin/node, while Debian 12's own nodejs package is 18 and cannot run it. The tests run the
# node checked here, through PORTCULLIS_TEST_NODE.
NODE ?= node
NODE_DIR := tests/oidc
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
NODE_MIN := 20.18
export PORTCULLIS_TEST_NODE := $(NODE)
define node_check
if ! command -v $(NODE) >/dev/null 2>&1; then \
  echo "make node: node not found; the tests' OpenID provider (oidc-provider) needs Node.js $(NODE_MIN) or later (Debian 12's nodejs package is 18, too old; the machine image has Node 20 at /usr/bin/node; or set NODE=/path/to/node)" >&2; exit 1; fi; \
if ! $(NODE) -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)'; then \
  echo "make node: $(NODE) is Node.js $$($(NODE) --version), too old: the tests' OpenID provider (oidc-provider) needs $(NODE_MIN) or later (Debian 12's nodejs package is 18; the machine image has Node 20 at /usr/bin/node; or set NODE=/path/to/node)" >&2; exit 1; fi
endef

.PHONY: deps py node demo test bench check fmt clippy fuzz fuzz-build fuzz-smoke

# Quiet when everything is present; otherwise one line saying what and why, one `apt-get update`,
# then the install. `sudo` only when not root.
deps:
	@missing=""; why=""; \
	if ! command -v cmake >/dev/null 2>&1; then \
	  missing="$$missing cmake"; why="$$why; cmake: pingora-core builds zlib-ng with it"; fi; \
	if ! command -v redis-server >/dev/null 2>&1; then \
	  missing="$$missing redis-server"; why="$$why; redis-server: the cluster rate-limit tests start one"; fi; \
	if ! command -v wrk >/dev/null 2>&1; then \
	  missing="$$missing wrk"; why="$$why; wrk: the load benchmark (and its smoke run in make test) drives the proxies with it"; fi; \
	if ! command -v g++ >/dev/null 2>&1; then \
	  missing="$$missing g++"; why="$$why; g++: the fuzz targets build libFuzzer from its C++ source"; fi; \
	if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then \
	  missing="$$missing dnsmasq-base"; why="$$why; dnsmasq-base: the DNS tests start a real DNS server whose answers they change"; fi; \
	if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then \
	  missing="$$missing haproxy"; why="$$why; haproxy: the load benchmark compares Portcullis with it"; fi; \
	if [ "$(DEPS_TEST_TOOLS)" != no ] && ! command -v promtool >/dev/null 2>&1; then \
	  missing="$$missing prometheus"; why="$$why; prometheus: its promtool checks and unit-tests deploy/prometheus/alerts.yaml and the dashboard's queries (tests/it/dashboards.rs)"; fi; \
	if [ "$(DEPS_TEST_TOOLS)" != no ] && ! command -v logrotate >/dev/null 2>&1 && [ ! -x /usr/sbin/logrotate ]; then \
	  missing="$$missing logrotate"; why="$$why; logrotate: a test runs deploy/logrotate/portcullis on a running proxy's access log"; fi; \
	if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	  missing="$$missing python3 python3-venv"; why="$$why; python3-venv: the gRPC tests run Python grpcio from a venv"; fi; \
	if [ "$(DEPS_TEST_TOOLS)" != no ] && [ ! -x /usr/bin/chromium ]; then \
	  missing="$$missing chromium"; why="$$why; chromium: the browser-session tests drive a real headless browser through login"; fi; \
	if [ "$(DEPS_TEST_TOOLS)" != no ] && ! command -v kubectl >/dev/null 2>&1; then \
	  missing="$$missing kubernetes-client"; why="$$why; kubernetes-client: the deploy tests render the kustomize base with kubectl kustomize (only when there is no kubectl: Debian's is 1.20, whose kustomize the base keeps to)"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing with apt-get ($${why#; })"; \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make deps: apt-get not found; install$$missing yourself" >&2; exit 1; fi; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	  else echo "make deps: not root and no sudo; install$$missing as root" >&2; exit 1; fi; \
	  $$sudo apt-get update -qq; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Chromium, promtool (prometheus), logrotate and kubectl are for the tests alone: these targets
# check the other packages only.
DEPS_TEST_TOOLS ?= yes
demo bench clippy fuzz-build: DEPS_TEST_TOOLS := no

# Quiet when the venv is there and its requirements did not change since; otherwise one line
# saying why, then a fresh venv and a hash-checked install of the pinned wheels.
py: $(PY_VENV)/.installed

$(PY_VENV)/.installed: $(PY_REQUIREMENTS) | deps
	@echo "make py: installing grpcio, check-jsonschema and kubernetes-validate into $(PY_VENV) (the gRPC tests' server and client, the deploy tests' checkers; from $(PY_REQUIREMENTS))"
	rm -rf $(PY_VENV)
	python3 -m venv $(PY_VENV)
	$(PY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  --require-hashes --only-binary :all: $(addprefix -r ,$(PY_REQUIREMENTS))
	touch $@

# Quiet when node is recent enough and the modules are installed from the current lock;
# otherwise one line saying why, then `npm ci` (exactly what the lock pins; no audit, no
# funding notes).
node: $(NODE_STAMP)
	@$(node_check)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@$(node_check)
	@echo "make node: installing oidc-provider into $(NODE_DIR)/node_modules (the tests' OpenID provider; from $(NODE_DIR)/package-lock.json)"
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: deps
	$(CARGO) build $(LOCKED) --release --bin portcullis
	$(TARGET_DIR)/release/portcullis demo

# `--all-targets`: the library's unit tests, the integration test binary, the binary, and the
# benches (built and run once each in criterion's test mode, so they cannot rot).
# `check` runs the binary `cargo test` just built for the integration tests (`cargo run` would
# build it a second time under the dev profile).
# The load bench's smoke run starts the example binaries (bare Pingora, the upstream); under
# `--all-targets` cargo builds examples only as test harnesses, so build them as programs first.
test: deps py node
	$(CARGO) build $(LOCKED) --examples
	$(CARGO) test $(LOCKED) --all-targets
	@for f in $(CONFIGS); do \
	  echo "portcullis check --config $$f"; \
	  $(TARGET_DIR)/debug/portcullis check --config "$$f"; \
	done
	$(MAKE) --no-print-directory fuzz-smoke

# The load bench finds the release binary and examples beside its own build and never runs
# cargo itself: build them first. The memory bench's table goes into the load report.
# (The criterion micro-benchmarks: `cargo bench --bench routing --bench auth --bench ratelimit`.)
bench: deps
	$(CARGO) build $(LOCKED) --release --bin portcullis --examples
	$(CARGO) bench $(LOCKED) --bench memory | tee $(abspath $(TARGET_DIR))/memory-bench.md
	LOAD_MEMORY_TABLE=$(abspath $(TARGET_DIR))/memory-bench.md $(CARGO) bench $(LOCKED) --bench load

check: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy $(LOCKED) --all-targets -- -D warnings

# Fuzzing (fuzz/, its own crate and lock; see "Fuzzing" in README.md). libFuzzer through the
# libfuzzer-sys crate, on stable rustc: fuzz/sancov-rustc.sh adds the coverage
# instrumentation cargo-fuzz would (without its nightly-only -Zsanitizer) to the crates in
# FUZZ_INSTRUMENT only, so the rest of Pingora builds as a plain optimised dependency.
# Changing FUZZ_INSTRUMENT needs `cargo clean` in fuzz/ (cargo does not see the wrapper's flags).
FUZZ_TARGETS := token routing config jwks headers store
FUZZ_TARGET ?= $(FUZZ_TARGETS)
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_INSTRUMENT ?= portcullis $(FUZZ_TARGETS) serde_yaml unsafe_libyaml yaml_rust2 serde_json jsonwebtoken base64 http
FUZZ_TARGET_DIR := $(abspath fuzz/target)
FUZZ_ARGS ?=

fuzz-build: deps
	cd fuzz && RUSTC_WRAPPER=$(abspath fuzz/sancov-rustc.sh) FUZZ_INSTRUMENT="$(FUZZ_INSTRUMENT)" \
	  CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) $(CARGO) build $(LOCKED) --release --bins

# Each target from its committed seeds (fuzz/corpus/<target>, read only; keywords from
# fuzz/dict/<target>.dict, as libFuzzer sees no string comparisons without a sanitizer) plus what earlier
# runs found (fuzz/target/corpus/<target>, where new inputs go). A crash stops the run: the
# input is in fuzz/artifacts/<target>/ and `fuzz/target/release/<target> FILE` replays it.
fuzz: fuzz-build
	@for t in $(FUZZ_TARGET); do \
	  mkdir -p $(FUZZ_TARGET_DIR)/corpus/$$t fuzz/artifacts/$$t; \
	  echo "make fuzz: $$t for $(FUZZ_SECONDS)s"; \
	  $(FUZZ_TARGET_DIR)/release/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	    $$([ -f fuzz/dict/$$t.dict ] && echo -dict=fuzz/dict/$$t.dict) -artifact_prefix=fuzz/artifacts/$$t/ $(FUZZ_ARGS) \
	    $(FUZZ_TARGET_DIR)/corpus/$$t fuzz/corpus/$$t; \
	done

# What `make test` runs: every target for FUZZ_SMOKE_SECONDS from the committed seeds, new
# inputs into a scratch directory that is removed after; a crash fails the run and is kept
# in fuzz/artifacts/<target>/. libFuzzer's output goes to a log shown only on failure.
fuzz-smoke: fuzz-build
	@scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p "$$scratch/$$t" fuzz/artifacts/$$t; \
	  if $(FUZZ_TARGET_DIR)/release/$$t -max_total_time=$(FUZZ_SMOKE_SECONDS) -timeout=10 \
	      $$([ -f fuzz/dict/$$t.dict ] && echo -dict=fuzz/dict/$$t.dict) -artifact_prefix=fuzz/artifacts/$$t/ \
	      "$$scratch/$$t" fuzz/corpus/$$t \
	      >"$$scratch/$$t.log" 2>&1; then \
	    echo "fuzz $$t: $$(grep -E '^#[0-9]+' "$$scratch/$$t.log" | tail -1)"; \
	  else \
	    tail -n 40 "$$scratch/$$t.log"; \
	    echo "fuzz $$t: FAILED; the input is in fuzz/artifacts/$$t/" >&2; exit 1; \
	  fi; \
	done
