#!/usr/bin/env bash
# Builds the wheels that scripts/gpu_check.sh installs on a GPU machine without network.
# Usage (on a machine with package access): scripts/make_gpu_wheels.sh [DIR]   (default .whl)
# The GPU image has python 3.12, numpy 2.x, tqdm and pillow, but no jittor or astunparse.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-.whl}
mkdir -p "$W"
# PyPI has only an sdist of jittor; building it gives a py3-none-any wheel (no compile happens here).
python3 -m pip wheel -q --no-deps jittor==1.3.11.0 -w "$W"
# numpy 1.26.4: Jittor 1.3.11 with numpy 2.x copies garbage between host and device (docs/gpu.md).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$W" \
    numpy==1.26.4 astunparse==1.6.3 six pyyaml==6.0.2
# gguf: medusa.model.weights reads the SmolLM2 GGUF with it (py3-none-any; pyyaml above is its one import)
python3 -m pip download -q --no-deps gguf==0.19.0 -d "$W"
ls -l "$W"
du -sh "$W"
