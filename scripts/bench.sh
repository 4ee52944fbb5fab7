#!/usr/bin/env bash
# Builds the release binary and the load generator (benches/loadgen.rs), then
# runs the real server against a loopback test issuer and prints the report
# (Markdown) on stdout; a copy goes to target/bench-report.md.
#
#   scripts/bench.sh                 # the full run (about 12 minutes)
#   scripts/bench.sh --quick         # a short smoke run
#   scripts/bench.sh --help          # the load generator's options
#   scripts/bench.sh --criterion     # also run the criterion suite (benches/verify.rs) first
#
# On a 2-CPU machine the server gets CPU 0 and the load generator CPU 1
# (taskset, util-linux); see --server-cpus / --client-cpus / --no-pin.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--criterion" ]]; then
  shift
  cargo bench --locked --bench verify
fi
# `cargo bench` builds the server binary with the release settings too.
cargo bench --locked --bench loadgen --no-run
cargo bench --locked --bench loadgen -- "$@" | tee target/bench-report.md
