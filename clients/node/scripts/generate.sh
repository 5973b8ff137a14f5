#!/bin/sh
# Regenerates gen/ (TypeScript types as .js + .d.ts, by protoc-gen-es) from the gateway's proto.
# Never edit gen/ by hand: run `npm run generate` (from clients/node) after changing a .proto.
#
# Inputs: <repo>/proto (the gateway API), <repo>/third_party/googleapis (google.rpc.Status,
# google.api.field_behavior), clients/node/proto (google.rpc error details). buf and protoc-gen-es
# come from node_modules (`npm ci` first); nothing is downloaded.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$here/../.." && pwd)
buf="$here/node_modules/.bin/buf"
plugin="$here/node_modules/.bin/protoc-gen-es"
for tool in "$buf" "$plugin"; do
  [ -x "$tool" ] || { echo "generate.sh: $tool is missing; run npm ci in $here" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
cp -R "$repo/proto/." "$work/src/"
cp -R "$repo/third_party/googleapis/." "$work/src/"
cp -R "$here/proto/google" "$work/src/"
cat > "$work/buf.yaml" <<YAML
version: v2
modules:
  - path: src
YAML
cat > "$work/buf.gen.yaml" <<YAML
version: v2
clean: true
plugins:
  - local: $plugin
    out: $work/gen
    opt:
      - target=js+dts
      - import_extension=js
      - json_types=true
YAML
(cd "$work" && "$buf" generate --template buf.gen.yaml)
rm -rf "$here/gen"
cp -R "$work/gen" "$here/gen"
echo "generate.sh: wrote $(cd "$here/gen" && find . -type f | sort | tr '\n' ' ')"
