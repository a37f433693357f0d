"""The fused kernels' CUDA sources compile with nvcc on a machine without a GPU
(medusa.kernels.cuda.compile_check): a kernel that does not compile is found before a device
call is spent on it."""
import shutil
from pathlib import Path

import pytest

from medusa.cli import compile_check as compile_check_cmd
from medusa.kernels.cuda import compile_check
from medusa.runtime.backend import jt

NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)


def test_rendering_records_every_op_and_restores_jt_code():
    real = jt.code
    rendered = compile_check.render_ops()
    assert jt.code is real
    assert {"rows_layer_float16", "decode_layer_float32", "mma_rows_float16", "cache_attention_float16"} <= set(rendered)
    for name, ops in rendered.items():
        assert len(ops) == 1 and "medusa_k::" in ops[0]["src"], name


@pytest.mark.e2e
@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_every_kernel_source_compiles():
    results = compile_check.compile_all(nvcc=NVCC)
    failed = {name: errors for name, (ok, errors) in results.items() if not ok}
    assert not failed, failed
    assert len(results) >= 20


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_a_broken_source_is_reported(tmp_path, monkeypatch):
    rendered = compile_check.render_ops()
    op = dict(rendered["silu_mul_float16"][0])
    op["src"] = op["src"].replace("medusa_k::launch_silu_mul", "medusa_k::launch_silu_mull")
    monkeypatch.setattr(compile_check, "render_ops", lambda: {"broken": [op]})
    results = compile_check.compile_all(nvcc=NVCC, keep=tmp_path)
    ok, errors = results["broken_0"]
    assert not ok and "launch_silu_mull" in errors


def test_bad_arguments_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        compile_check_cmd.main(["--jobs", "0"])
    assert exit_.value.code == 2 and "--jobs 0: give at least 1" in capsys.readouterr().err
    assert compile_check_cmd.main(["--nvcc", "/no/such/nvcc"]) == 2
    assert "no nvcc at /no/such/nvcc" in capsys.readouterr().err


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_an_architecture_nvcc_refuses_is_one_line(capsys):
    assert compile_check_cmd.main(["--arch", "sm_1", "--nvcc", NVCC]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sm_1" in err[0]
