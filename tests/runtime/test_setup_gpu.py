"""CPU-only tests of medusa.runtime.cuda_setup: the patches on temp copies of Jittor's files, the numpy check."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medusa.runtime.options as options
from medusa.cli import setup_gpu as setup_gpu_cmd
from medusa.runtime import cuda_setup as setup_gpu


@pytest.fixture
def jittor_copy(tmp_path) -> Path:
    """The four files the patches touch, copied from the installed (unpatched or patched) Jittor."""
    root = setup_gpu.jittor_dir()
    for patch in setup_gpu.PATCHES:
        (tmp_path / patch.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / patch.path, tmp_path / patch.path)
    return tmp_path


def test_patches_apply_once_and_are_idempotent(jittor_copy):
    first = {p.name: setup_gpu.apply_patch(jittor_copy, p) for p in setup_gpu.PATCHES}
    patched = {p.path: (jittor_copy / p.path).read_text() for p in setup_gpu.PATCHES}
    second = {p.name: setup_gpu.apply_patch(jittor_copy, p) for p in setup_gpu.PATCHES}
    assert set(first.values()) <= {"applied", "already"}
    assert set(second.values()) == {"already"}
    assert patched == {p.path: (jittor_copy / p.path).read_text() for p in setup_gpu.PATCHES}


def test_patched_text_drops_what_cuda13_removed(jittor_copy):
    for p in setup_gpu.PATCHES:
        setup_gpu.apply_patch(jittor_copy, p)
    text = lambda rel: (jittor_copy / rel).read_text()  # noqa: E731
    assert "deviceProp.computeMode" not in text("extern/cuda/inc/helper_cuda.h")
    assert "deviceProp.clockRate" not in text("extern/cuda/inc/helper_cuda.h")
    assert "-std=c++17 -fPIC" in text("compiler.py") and "std:c++14" not in text("compiler.py")
    assert "cub::Max()" not in text("other/code_softmax.py")
    where = text("extern/cuda/cub/ops/cub_where_op.cc")
    assert "cub::CountingInputIterator" not in where and "cub::TransformInputIterator" not in where
    assert where.count("#include <thrust/iterator/counting_iterator.h>") == 1


def test_patched_python_files_still_compile(jittor_copy):
    for p in setup_gpu.PATCHES:
        setup_gpu.apply_patch(jittor_copy, p)
    for rel in ("compiler.py", "other/code_softmax.py"):
        compile((jittor_copy / rel).read_text(), rel, "exec")


def test_check_only_reports_needed_without_writing(jittor_copy):
    patch = setup_gpu.PATCHES[-1]
    setup_gpu.apply_patch(jittor_copy, patch)
    path = jittor_copy / patch.path
    old, new = patch.edits[1]
    path.write_text(path.read_text().replace(new, old))  # half-patched
    before = path.read_text()
    assert setup_gpu.apply_patch(jittor_copy, patch, write=False) == "needed"
    assert path.read_text() == before
    assert setup_gpu.apply_patch(jittor_copy, patch) == "applied"


def test_unexpected_file_is_a_clear_error(jittor_copy):
    patch = setup_gpu.PATCHES[2]
    (jittor_copy / patch.path).write_text("nothing to see here\n")
    with pytest.raises(setup_gpu.SetupError, match="not the Jittor"):
        setup_gpu.apply_patch(jittor_copy, patch)
    (jittor_copy / patch.path).unlink()
    with pytest.raises(setup_gpu.SetupError, match="not found"):
        setup_gpu.apply_patch(jittor_copy, patch)


def test_numpy_version_message():
    assert setup_gpu.numpy_problem("1.26.4") is None
    message = setup_gpu.numpy_problem("2.5.2")
    assert "numpy<2" in message and "2.5.2" in message and "PYTHONPATH" in message


def test_patches_needed_only_for_cuda13():
    assert not setup_gpu.patches_needed(None, None)
    assert not setup_gpu.patches_needed((12, 4), 2)
    assert setup_gpu.patches_needed((13, 0), None)
    assert setup_gpu.patches_needed(None, 3)


def test_prepare_does_not_import_jittor():
    code = ("import sys; from medusa.runtime import cuda_setup; cuda_setup.prepare(check_only=True); "
            "assert 'jittor' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "nvcc_path": ""})


def _fake_nccl(root):
    pkg = root / "nvidia" / "nccl"
    (pkg / "include").mkdir(parents=True)
    (pkg / "lib").mkdir()
    (pkg / "include" / "nccl.h").write_text("/* nccl */\n")
    (pkg / "lib" / "libnccl.so.2").write_bytes(b"\x7fELF")
    return pkg


def test_mpi_env_points_jittor_at_open_mpi_and_the_pip_nccl(tmp_path, monkeypatch, capsys):
    import importlib
    import shlex

    pkg = _fake_nccl(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)
    monkeypatch.delitem(sys.modules, "nvidia.nccl", raising=False)
    prefix = tmp_path / "ompi"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "mpicc").write_text("#!/bin/sh\n")
    (prefix / "bin" / "mpicc").chmod(0o755)
    with options.override(jittor_home=str(tmp_path / "home")):
        assert setup_gpu_cmd.main(["--mpi-env", str(prefix)]) == 0
        env = dict(shlex.split(line[len("export "):])[0].split("=", 1) for line in capsys.readouterr().out.splitlines())
        assert env["mpicc_path"] == str(prefix / "bin" / "mpicc") and env["PATH"].startswith(str(prefix / "bin") + ":")
        assert env["use_nccl"] == "1" and env["NCCL_NVLS_ENABLE"] == "0"
        # what Jittor's setup_nccl asserts: include/nccl.h and lib/libnccl.so
        assert (Path(env["nccl_include_path"]) / "nccl.h").read_text() == "/* nccl */\n"
        assert Path(env["nccl_lib_path"], "libnccl.so").resolve() == (pkg / "lib" / "libnccl.so.2").resolve()
        assert setup_gpu_cmd.main(["--mpi-env", str(prefix)]) == 0       # again: the links are replaced


def test_mpi_env_without_open_mpi_or_nccl_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    assert setup_gpu_cmd.main(["--mpi-env", str(tmp_path / "none")]) == 2
    assert "bin/mpicc is missing or not executable" in capsys.readouterr().err
    with pytest.raises(setup_gpu.SetupError, match="NCCL not found"):
        monkeypatch.setattr(setup_gpu.importlib.util, "find_spec", lambda name: None)
        setup_gpu.nccl_env(tmp_path)
