#!/usr/bin/env bash
# Runs scripts/hostile_client.py's attacks against a release binary with its
# default flags (loopback only) and prints one summary line per attack:
# peak and after RSS, and how many fresh probes (gRPC Health/Check, or GET
# /healthz for the metrics port) were answered during the attack.
#
#   scripts/hostile_trials.sh [BINARY] [SECONDS]
#
# BINARY defaults to target/release/clerk-introspect (cargo build --release);
# SECONDS (default 40) is each attack's length. `demo` provides the loopback
# issuer; `serve` is the server under test, restarted for each attack.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/clerk-introspect}
seconds=${2:-40}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin" demo --listen 127.0.0.1:0 >"$work/demo.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  issuer=$(grep -o 'test issuer http://[0-9.:]*' "$work/demo.out" | cut -d' ' -f3 || true)
  [ -n "$issuer" ] && break
  sleep 0.1
done
[ -n "$issuer" ] || { echo "demo did not start"; cat "$work/demo.out"; exit 1; }

serve() {
  "$bin" serve --issuer "$issuer" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$work/serve.out" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do
    grpc=$(grep -o 'serving gRPC.*addr=[0-9.:]*' "$work/serve.out" | grep -o '[0-9.]*:[0-9]*$' || true)
    http=$(grep -o 'serving HTTP.*addr=[0-9.:]*' "$work/serve.out" | grep -o '[0-9.]*:[0-9]*$' || true)
    [ -n "$grpc" ] && [ -n "$http" ] && return
    sleep 0.1
  done
  echo "serve did not start"; cat "$work/serve.out"; exit 1
}

trial() {
  local name=$1; shift
  serve
  local addr=$grpc
  [ "$1" = "--mode" ] && [ "$2" = "slowhead" ] && addr=$http
  python3 scripts/hostile_client.py --addr "$addr" --pid "$server" --seconds "$seconds" "$@" \
    | grep '^summary' | sed "s/^summary/$name/"
  kill "$server"; wait "$server" 2>/dev/null || true
}

trial "headers-only  " --mode streams --conns 400 --streams 256
trial "partial-60k   " --mode partial --conns 30 --streams 256 --bytes 60000 --declared 65000
trial "idle-4096     " --mode idle --conns 4096
trial "metrics-slow  " --mode slowhead --conns 136
