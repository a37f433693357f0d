"""medusa.runtime.backend: the Jittor runtime path never imports torch (it is for tests and checkpoint reading)."""
import os
import subprocess
import sys

import pytest

from medusa.runtime.backend import use_device

RUNTIME_MODULES = ("medusa.runtime.backend", "medusa.model.transformer", "medusa.decoding.loop", "medusa.cli.generate", "medusa.bench.benchmark",
                   "medusa.training.trainer", "medusa.heads.io", "medusa.model.weights", "medusa.training.distill")


def test_runtime_modules_do_not_import_torch():
    """Jittor itself imports torch at import time unless FIX_TORCH_ERROR=0 (medusa.runtime.backend sets it)."""
    env = {k: v for k, v in os.environ.items() if k != "FIX_TORCH_ERROR"}
    code = (f"import importlib, sys\nfor m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_use_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        use_device("tpu")


def test_importing_the_runtime_starts_no_process(tmp_path):
    """The GPU test reads the driver's files (medusa.runtime.devices): an nvidia-smi on PATH is never run
    at import, so a CPU machine imports at once and a broken driver cannot stall the import."""
    marker = tmp_path / "ran"
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nsleep 30\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    code = "import medusa.runtime.backend, medusa.runtime.cuda_setup; medusa.runtime.cuda_setup.find_nvcc(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert not marker.exists()
