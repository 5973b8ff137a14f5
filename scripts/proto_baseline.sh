#!/bin/sh
# Writes tests/proto_baseline/api-v1.binpb: the buf image of the proto as released at a commit (default: the
# API v1 commit), which `buf breaking` (tests/unit/test_proto_breaking.py) compares the working tree against.
# Run it only when a new API version is released on purpose.
set -eu
commit=${1:-5c1fc1d}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$root" archive "$commit" proto third_party buf.yaml | tar -x -C "$work"
(cd "$work" && "$root/tests/node/node_modules/.bin/buf" build --exclude-source-info -o "$root/tests/proto_baseline/api-v1.binpb")
echo "tests/proto_baseline/api-v1.binpb: the proto of $commit"
