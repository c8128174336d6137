#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz build: adds libFuzzer's coverage instrumentation (the flags
# cargo-fuzz passes, minus the nightly-only -Zsanitizer) to the crates named in FUZZ_INSTRUMENT
# only, so the rest of Pingora builds as a plain optimised dependency. Cargo calls it as
# `sancov-rustc.sh RUSTC ARGS...`.
set -euo pipefail
rustc="$1"; shift
name=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "--crate-name" ]; then name="$arg"; break; fi
  prev="$arg"
done
case " ${FUZZ_INSTRUMENT:-} " in
  *" $name "*)
    exec "$rustc" "$@" --cfg fuzzing \
      -Cpasses=sancov-module \
      -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
      -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares ;;
  *) exec "$rustc" "$@" --cfg fuzzing ;;
esac
