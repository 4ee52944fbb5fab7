#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/), one after another, each
# for a given time, and prints one summary line per target.
#
#   scripts/fuzz.sh [target|all] [seconds]     (default: all, 600 s each)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Each target starts from its committed corpus (fuzz/corpus/<target>/) and
# adds what it finds there; new crashes land in fuzz/artifacts/<target>/.
# AddressSanitizer (cargo fuzz's default) and leak detection are on.
# Logs: $FUZZ_LOG_DIR (default /tmp/clerk-introspect-fuzz)/<target>.log.
#
# Environment: FUZZ_JOBS (libFuzzer -fork workers, default 1), FUZZ_RSS_MB
# (default 2048), FUZZ_TIMEOUT (seconds one input may take, default 10),
# FUZZ_EXTRA (more libFuzzer flags).
#
# After a long run, shrink the corpus before committing it:
#   cargo +nightly fuzz cmin <target>
# Exit status: 0 when every target ran clean, 1 when one crashed, leaked,
# timed out or ran out of memory.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(token jwks config ext_authz verify)
want=${1:-all}
seconds=${2:-600}
log_dir=${FUZZ_LOG_DIR:-/tmp/clerk-introspect-fuzz}
rss_mb=${FUZZ_RSS_MB:-2048}
timeout_s=${FUZZ_TIMEOUT:-10}
mkdir -p "$log_dir"

# Largest input per target: a token is at most 16 KiB; the other inputs get
# room for the same plus their framing.
max_len() {
  case $1 in
    token) echo 17000 ;;
    verify) echo 20000 ;;
    *) echo 16384 ;;
  esac
}

if [ "$want" = all ]; then
  run=("${targets[@]}")
else
  [[ " ${targets[*]} " == *" $want "* ]] || { echo "unknown target $want; one of: ${targets[*]} all" >&2; exit 2; }
  run=("$want")
fi

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2; exit 2; }

# Build every target once (release, debug assertions, ASan) before timing any.
(cd fuzz && cargo +nightly fuzz build) >"$log_dir/build.log" 2>&1 || { tail -n 30 "$log_dir/build.log" >&2; exit 1; }

status=0
for t in "${run[@]}"; do
  log="$log_dir/$t.log"
  mkdir -p "fuzz/corpus/$t"
  start=$(date +%s)
  set +e
  (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$timeout_s" \
    -max_len="$(max_len "$t")" -detect_leaks=1 -print_final_stats=1 ${FUZZ_EXTRA:-}) >"$log" 2>&1
  rc=$?
  set -e
  # The fuzzing time libFuzzer reports (the build before it is not counted).
  elapsed=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE '[0-9]+ second' | grep -oE '[0-9]+' | tail -n 1)
  elapsed=${elapsed:-$(( $(date +%s) - start ))}
  # libFuzzer's final stats and last status line.
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
  corpus=$(grep -oE 'corp: [0-9]+/[0-9A-Za-z]+' <<<"$last" | cut -d' ' -f2 || true)
  if [ "$rc" -eq 0 ]; then
    result=clean
  else
    status=1
    result="FAILED (exit $rc): $(grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)[^)]*\)?|panicked at [^ ]+' "$log" || echo 'see log')"
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | cut -d' ' -f5 || true)
    [ -n "$artifact" ] && result="$result; input $artifact"
  fi
  printf '%-9s %5ss  runs %s  exec/s %s  cov %s  ft %s  corpus %s  %s  (log %s)\n' \
    "$t" "$elapsed" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corpus:-?}" "$result" "$log"
done
exit "$status"
