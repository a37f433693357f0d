"""A conversion killed while it installs into an EXISTING unit (write_unit's replace into a folder
that holds the same model with other weights) leaves the old unit or the new one, never a mix.

The kill points are every change the conversion makes inside the unit's folder (a replace, a
rename, a removal, a write that stops halfway): the k-th one dies, for k = 0, 1, ... until the
conversion completes. In-process the death is an exception that nothing catches (the stage's
cleanup still runs, which a real kill skips: the subprocess case checks that a left stage does
not matter)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import ROOT

from medusa.model import weights
from medusa.runtime.errors import UsageError


class Killed(BaseException):
    """The process died here (a BaseException: no `except Exception` in the code catches it)."""


def unit_state(folder):
    """What loading the unit sees: its config and tensors, and the bytes of every other file
    (None: it does not load)."""
    try:
        config, tensors = weights.read_checkpoint(folder / "model.pkl")
    except UsageError:
        return None
    files = {f.name: f.read_bytes() for f in sorted(folder.iterdir())
             if f.is_file() and f.name != "model.pkl" and not f.name.startswith(".")}
    return config, tensors, files


def same(a, b):
    return a is not None and b is not None and (a[0] == b[0] and a[2] == b[2] and a[1].keys() == b[1].keys()
            and all(np.array_equal(a[1][k], b[1][k]) for k in a[1]))


@pytest.fixture
def units(tiny_pkl, tmp_path):
    """(old unit folder to copy, the config and new tensors to write over it, the new unit)."""
    old = tiny_pkl("qwen2").parent
    config, tensors = weights.read_checkpoint(old / "model.pkl")
    new_tensors = {k: (v + 0.5).astype(v.dtype) for k, v in tensors.items()}   # same model, other weights
    fresh = weights.write_unit(tmp_path / "fresh" / "model.pkl", config, new_tensors, "float32", old / "model.pkl")
    return old, config, new_tensors, unit_state(fresh.parent)


def kill_at(monkeypatch, folder, k):
    """Make the k-th change inside `folder` kill the conversion."""
    seen = [0]

    def inside(path):
        path = os.path.abspath(path)
        return path == str(folder) or path.startswith(str(folder) + os.sep)

    def point(path):
        if inside(path):
            if seen[0] == k:
                raise Killed(path)
            seen[0] += 1

    def wrap(real, arg=0):
        return lambda *a, **kw: point(a[arg]) or real(*a, **kw)

    for name, arg in (("replace", 1), ("rename", 1), ("remove", 0), ("unlink", 0), ("rmdir", 0)):
        monkeypatch.setattr(os, name, wrap(getattr(os, name), arg))
    for name, arg in (("rmtree", 0), ("move", 1), ("copy", 1), ("copyfile", 1)):
        monkeypatch.setattr(shutil, name, wrap(getattr(shutil, name), arg))
    real_write = Path.write_bytes

    def write_bytes(self, data):                # a write killed halfway leaves half the bytes
        if inside(self) and seen[0] == k:
            real_write(self, data[:len(data) // 2])
        point(self)
        return real_write(self, data)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **kw: write_bytes(self, text.encode()))


def test_a_kill_at_every_point_of_the_install_leaves_the_old_or_the_new_unit(units, tmp_path, monkeypatch):
    old, config, new_tensors, new_state = units
    old_state = unit_state(old)
    outcomes = []
    for k in range(20):
        folder = tmp_path / f"k{k}" / "unit"
        shutil.copytree(old, folder)
        with monkeypatch.context() as m:
            kill_at(m, folder, k)
            try:
                weights.write_unit(folder / "model.pkl", config, new_tensors, "float32", old / "model.pkl")
                done = True
            except Killed:
                done = False
        state = unit_state(folder)
        assert same(state, old_state) or same(state, new_state), f"killed at change {k}: neither unit"
        outcomes.append("new" if same(state, new_state) else "old")
        if done:
            break
    assert done and outcomes[-1] == "new" and outcomes[0] == "old"


def test_a_real_kill_before_the_weights_replace_leaves_the_old_unit(units, tmp_path):
    """os._exit at the weights' replace: no cleanup runs; the old unit loads, and the next
    conversion removes the dead one's stage and installs the new unit."""
    old, config, new_tensors, new_state = units
    folder = tmp_path / "unit"
    shutil.copytree(old, folder)
    np.savez(tmp_path / "new.npz", **new_tensors)
    (tmp_path / "config.json").write_text(json.dumps(config))
    script = f"""
import json, os
import numpy as np
from medusa.model import weights
from medusa.runtime.errors import UsageError
real = os.replace
os.replace = lambda a, b: os._exit(9) if str(b).endswith("model.pkl") else real(a, b)
config = json.loads(open({str(tmp_path / 'config.json')!r}).read())
tensors = dict(np.load({str(tmp_path / 'new.npz')!r}))
weights.write_unit({str(folder / 'model.pkl')!r}, config, tensors, "float32", {str(old / 'model.pkl')!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 9, proc.stderr
    assert list(tmp_path.glob(".unit.converting-*"))                 # the dead one's stage is left
    assert same(unit_state(folder), unit_state(old))
    weights.write_unit(folder / "model.pkl", config, new_tensors, "float32", old / "model.pkl")
    assert same(unit_state(folder), new_state) and not list(tmp_path.glob(".unit.converting-*"))
