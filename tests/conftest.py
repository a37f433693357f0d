"""Session fixtures shared by the test files, and how a run uses the machine.

    tiny_hf(family)    -> folder of a transformers-saved tiny random model (tests/support.py)
    tiny_pkl(family)   -> that model converted by weight_convert.py in fp32 (model.pkl + config + tokenizer)
    smollm2_pkl        -> the embedded default SmolLM2-135M-Instruct converted in fp32 (slow)

Models are built once per session (once per worker) under pytest's tmp dir; SmolLM2 is converted
into $MEDUSA_JITTOR_HOME (default ~/.cache/medusa-jittor), where later sessions find it.

Speed on a fresh machine, where most of a first run is Jittor compiling kernels:
- On a CPU machine, a run that names a folder (`pytest tests`, `pytest tests/decoding`) is spread
  over two worker processes when pytest-xdist is installed (the [test] extra), one test module
  per worker at a time; a run of single files stays in one process, and so does every run on a
  GPU machine (two processes on one device were never checked). `-n 0` keeps any run in one
  process (as --pdb does), `-n 4` asks for four workers.
- Jittor's parallel op compiler (threads, one per core) builds the kernels a graph needs at
  the same time. The runtime leaves it off on the CPU together with the compile pool of forked
  processes (medusa/runtime/backend.py); kernels compiled either way are the same files.
"""
import os
from pathlib import Path

import pytest
import support

from medusa.runtime.backend import jt
from medusa.runtime.devices import gpu_available

WORKERS = 2   # the CI machine's cores; more workers mostly wait for Jittor's compile lock on a fresh cache

if not jt.flags.use_parallel_op_compiler:
    jt.flags.use_parallel_op_compiler = os.cpu_count() or 1


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Spread a run of whole folders over WORKERS processes (see the module docstring)."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if config.option.numprocesses is not None or config.option.collectonly or config.option.usepdb:
        return
    if (os.cpu_count() or 1) < 2 or not any(Path(a.split("::")[0]).is_dir() for a in config.args):
        return
    if gpu_available():
        return
    config.option.numprocesses = WORKERS
    if config.option.dist == "no":
        config.option.dist = "loadscope"   # a module's tests (and its module fixtures) stay on one worker


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            built[family] = support.make_hf_model(family, tmp_path_factory.mktemp(f"hf-{family}"))
        return built[family]
    return get


@pytest.fixture(scope="session")
def tiny_pkl(tiny_hf, tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            import weight_convert

            out = tmp_path_factory.mktemp(f"jt-{family}") / "model.pkl"
            weight_convert.main(["--base_model_path", str(tiny_hf(family)), "--output", str(out),
                                 "--dtype", "float32"])
            built[family] = out
        return built[family]
    return get


@pytest.fixture(scope="session")
def smollm2_pkl():
    """Converted once: a second worker waits for the first one's conversion instead of repeating it."""
    import fcntl

    from medusa.model import weights

    folder = weights.default_model_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return weights.ensure_default_model("float32")
