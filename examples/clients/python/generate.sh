#!/usr/bin/env sh
# Generates the Python stubs for introspect.v1 from the repository's proto into
# ./generated (not committed: they follow the proto and the grpcio-tools
# version in requirements.txt). Run it again after either changes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
proto_root="${INTROSPECT_PROTO_ROOT:-$here/../../../proto}"
rm -rf "$here/generated"
mkdir -p "$here/generated"
python3 -m grpc_tools.protoc \
  --proto_path="$proto_root" \
  --python_out="$here/generated" \
  --pyi_out="$here/generated" \
  --grpc_python_out="$here/generated" \
  "$proto_root/introspect/v1/introspect.proto"
echo "generated $here/generated/introspect/v1/"
