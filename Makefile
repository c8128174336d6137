# Portcullis: the two commands that set it up on a fresh machine are `make demo` and `make test`.
#
#   make deps    install the system packages the build and tests need (apt-get, only when missing)
#   make demo    deps, release build, run `portcullis demo`
#   make test    deps, every test (lib, integration, benches compiled and smoke-run), `check` of config/
#   make bench   the criterion benchmarks (release build)
#   make check   cargo fmt --check and clippy with warnings as errors

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

CARGO ?= cargo
# Cargo.lock is committed: build exactly what it pins, and fail if Cargo.toml disagrees with it.
LOCKED ?= --locked
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
CONFIGS := $(wildcard config/*.yaml config/*.yml)

.PHONY: deps demo test bench check fmt clippy

# Quiet when everything is present; otherwise one line saying what and why, one `apt-get update`,
# then the install. `sudo` only when not root.
deps:
	@missing=""; why=""; \
	if ! command -v cmake >/dev/null 2>&1; then \
	  missing="$$missing cmake"; why="$$why; cmake: pingora-core builds zlib-ng with it"; fi; \
	if ! command -v redis-server >/dev/null 2>&1; then \
	  missing="$$missing redis-server"; why="$$why; redis-server: the cluster rate-limit tests start one"; fi; \
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

demo: deps
	$(CARGO) build $(LOCKED) --release --bin portcullis
	$(TARGET_DIR)/release/portcullis demo

# `--all-targets`: the library's unit tests, the integration test binary, the binary, and the
# benches (built and run once each in criterion's test mode, so they cannot rot).
# `check` runs the binary `cargo test` just built for the integration tests (`cargo run` would
# build it a second time under the dev profile).
test: deps
	$(CARGO) test $(LOCKED) --all-targets
	@for f in $(CONFIGS); do \
	  echo "portcullis check --config $$f"; \
	  $(TARGET_DIR)/debug/portcullis check --config "$$f"; \
	done

bench: deps
	$(CARGO) bench $(LOCKED)

check: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy $(LOCKED) --all-targets -- -D warnings
