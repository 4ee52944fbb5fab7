#!/usr/bin/env bash
# The long differential run (docs/differential.md): tokens made by mutation,
# verified here and by panva's jose, for a given time.
#
#   scripts/differential.sh --seconds 600 [--seed 12345]
#
# Without --seed a random seed is used; it is printed, so that a failure can
# be run again with it. Exits non-zero if any token was valid here and
# invalid for jose, or invalid here for a reason docs/differential.md does
# not list. Needs what `cargo test` needs (ci/tools/setup.sh provisions jose).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600
seed=
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "scripts/differential.sh: unknown argument $1 (use --seconds N [--seed S])" >&2; exit 64 ;;
  esac
done
case $seconds in ''|*[!0-9]*) echo "scripts/differential.sh: --seconds must be a whole number" >&2; exit 64 ;; esac
case $seed in *[!0-9]*) echo "scripts/differential.sh: --seed must be a whole number" >&2; exit 64 ;; esac
export DIFFERENTIAL_SECONDS=$seconds
[ -n "$seed" ] && export DIFFERENTIAL_SEED=$seed
exec cargo test --locked --test differential -- --ignored --exact long_run --nocapture
