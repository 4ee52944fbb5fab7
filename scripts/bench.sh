#!/usr/bin/env bash
# Builds the release binary and the load generator (tools/loadgen, a member of
# this workspace), then runs the real server against a loopback test issuer and
# prints the report (Markdown) on stdout; a copy goes to target/bench-report.md.
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
# Both binaries, release settings, one target directory: the load generator
# starts target/release/clerk-introspect (its default --server-bin).
cargo build --release --locked --bin clerk-introspect --bin loadgen
target/release/loadgen "$@" | tee target/bench-report.md
