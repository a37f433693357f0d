"""The runtime options (medusa/runtime/options.py): each grammar of the MEDUSA_* variables, bad
values as one UsageError naming the variable, read once, override restores, the public switches
go through the options, and results files and train_args.json record them."""
import dataclasses
import json
from pathlib import Path

import pytest
from support import ROOT

import medusa.runtime.options as options
from medusa.runtime.errors import UsageError

SWITCHES = ("cuda_kernels", "gemv", "layer_op", "rows_layer", "mma", "tree_attention")


def env_of(name):
    return next(f.metadata["env"] for f in dataclasses.fields(options.Options) if f.name == name)


def test_defaults_without_any_variable():
    assert options.from_environ({}) == options.Options()
    assert options.Options().as_dict() == {
        "matmul": "blas", "blas_threads": None, "cuda_kernels": True, "gemv": True, "layer_op": True,
        "rows_layer": True, "mma": True, "tree_attention": True, "exact": "decode", "device_loop": "auto",
        "jittor_home": None}


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize("text,value", [("on", True), ("1", True), ("TRUE", True), (" On ", True),
                                        ("off", False), ("0", False), ("false", False), ("OFF", False),
                                        ("auto", True), ("", True)])
def test_on_off_switches_share_one_grammar(name, text, value):
    assert getattr(options.from_environ({env_of(name): text}), name) is value


@pytest.mark.parametrize("text,value", [("auto", "auto"), ("", "auto"), ("on", "on"), ("1", "on"), ("True", "on"),
                                        ("off", "off"), ("0", "off"), ("false", "off")])
def test_device_loop_is_auto_on_or_off(text, value):
    assert options.from_environ({"MEDUSA_DEVICE_LOOP": text}).device_loop == value


def test_choices_counts_and_paths():
    got = options.from_environ({"MEDUSA_MATMUL": "Jittor", "MEDUSA_BLAS_THREADS": " 3 ",
                                "MEDUSA_JITTOR_HOME": "/tmp/Some Home"})
    assert (got.matmul, got.blas_threads, got.jittor_home) == ("jittor", 3, "/tmp/Some Home")   # paths keep their case
    assert options.from_environ({"MEDUSA_MATMUL": "blas", "MEDUSA_BLAS_THREADS": ""}).blas_threads is None


@pytest.mark.parametrize("var,text,allowed", [
    ("MEDUSA_GEMV", "yes", "on, off or auto"), ("MEDUSA_TREE_ATTENTION", "2", "on, off or auto"),
    ("MEDUSA_CUDA_KERNELS", "enabled", "on, off or auto"), ("MEDUSA_DEVICE_LOOP", "gpu", "auto, on or off"),
    ("MEDUSA_MATMUL", "mkl", "blas or jittor"), ("MEDUSA_BLAS_THREADS", "0", "a whole number >= 1"),
    ("MEDUSA_BLAS_THREADS", "two", "a whole number >= 1")])
def test_a_bad_value_names_the_variable_and_what_it_takes(var, text, allowed):
    with pytest.raises(UsageError) as e:
        options.from_environ({var: text})
    assert str(e.value).startswith(f"${var} must be {allowed}") and repr(text) in str(e.value)


def test_read_once_from_the_environment(monkeypatch):
    monkeypatch.setattr(options, "_current", None)            # as in a fresh process (restored after)
    monkeypatch.setenv("MEDUSA_GEMV", "off")
    monkeypatch.setenv("MEDUSA_DEVICE_LOOP", "1")
    first = options.current()
    assert not first.gemv and first.device_loop == "on"
    monkeypatch.setenv("MEDUSA_GEMV", "on")
    assert options.current() is first                         # later changes of the environment are not read
    monkeypatch.setattr(options, "_current", None)
    monkeypatch.setenv("MEDUSA_MMA", "maybe")
    with pytest.raises(UsageError, match=r"\$MEDUSA_MMA must be on, off or auto"):
        options.current()


def test_override_restores_even_after_an_error():
    before = options.current()
    with options.override(gemv=False, device_loop="on") as inside:
        assert options.current() is inside and not inside.gemv and inside.device_loop == "on"
        with options.override(gemv=True):
            assert options.current().gemv and options.current().device_loop == "on"
        assert not options.current().gemv
    assert options.current() is before
    with pytest.raises(RuntimeError):
        with options.override(mma=False):
            raise RuntimeError
    assert options.current() is before
    with options.override():
        options.replace(layer_op=False)                       # a run-time switch inside ends with the block
    assert options.current() is before


def test_bad_values_from_code_are_refused():
    with pytest.raises(UsageError, match="device_loop"):
        options.Options(device_loop="1")                      # code uses the canonical spelling
    with pytest.raises(UsageError, match="blas_threads"):
        options.Options(blas_threads=0)
    with pytest.raises(UsageError, match="gemv"):
        options.Options(gemv="off")
    with pytest.raises(TypeError):
        with options.override(no_such_switch=True):
            pass
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.current().gemv = False


def test_kernel_switches_go_through_the_options():
    from medusa.kernels import cuda as ck

    uses = {"cuda_kernels": ck.use_kernels, "gemv": ck.use_gemv, "layer_op": ck.use_layer_op,
            "rows_layer": ck.use_rows_layer, "mma": ck.use_mma, "tree_attention": ck.use_tree_attention}
    assert set(uses) == set(SWITCHES)
    with options.override():
        for name, use in uses.items():
            assert use() is getattr(options.current(), name)
            assert use(False) is False and getattr(options.current(), name) is False
            with options.override(**{name: True}):
                assert use() is True
            assert use() is False
            assert use(True) is True and getattr(options.current(), name) is True
            assert env_of(name) in use.__doc__


def test_cpu_kernel_settings_go_through_the_options():
    from medusa.kernels import cpu as kernels

    with options.override(matmul="blas", blas_threads=None):
        assert kernels.use_blas() == kernels.blas_installed()
        assert kernels.use_blas(False) is False and options.current().matmul == "jittor"
        assert kernels.use_blas(True) == kernels.blas_installed() and options.current().matmul == "blas"
        assert kernels.num_threads() == kernels.available_cores()
        assert kernels.set_num_threads(3) == 3 and options.current().blas_threads == 3
        assert kernels.set_num_threads() == 3                   # None keeps the setting
        with options.override(blas_threads=2):
            assert kernels.num_threads() == 2
        with pytest.raises(ValueError):
            kernels.set_num_threads(0)
    with options.override(matmul="jittor"):
        assert not kernels.use_blas()


def test_medusa_home_follows_the_option(tmp_path):
    from medusa.runtime.files import medusa_home

    with options.override(jittor_home=str(tmp_path / "home")):
        assert medusa_home() == tmp_path / "home"
    with options.override(jittor_home=None):
        assert medusa_home() == Path.home() / ".cache" / "medusa-jittor"


def test_results_files_record_the_options(tmp_path):
    from medusa.app.results import environment, start_results

    with options.override(gemv=False, device_loop="on", blas_threads=2):
        recorded = environment()["options"]
        fresh = start_results(tmp_path / "r.json", {"greedy": True}, resume=False)
    assert recorded == fresh["environment"]["options"] == {
        **options.Options().as_dict(), "gemv": False, "device_loop": "on", "blas_threads": 2}
    json.dumps(fresh)                                         # JSON-ready as it is


def test_train_args_record_the_options(tiny_pkl, tmp_path):
    from support import tiny_args

    from medusa.training import trainer as training

    with options.override(gemv=False, device_loop="off"):          # neither changes CPU training
        tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, epochs=1, max_steps=1, val_ratio=0.0))
        tr.fit()
        want = options.as_dict()
    saved = json.loads((tr.args.out_dir() / "train_args.json").read_text())
    assert saved["options"] == want and not want["gemv"] and want["device_loop"] == "off"


def test_the_docs_table_is_the_options_table():
    text = (ROOT / "docs" / "options.md").read_text()
    assert options.markdown_table() in text
    for f in dataclasses.fields(options.Options):
        assert f"`{f.metadata['env']}`" in text


@pytest.mark.parametrize("text,value", [("decode", "decode"), ("", "decode"), ("TREE", "tree"), ("off", "off")])
def test_exact_is_decode_tree_or_off(text, value):
    assert options.from_environ({"MEDUSA_EXACT": text}).exact == value


def test_exact_refuses_other_values():
    with pytest.raises(UsageError, match=r"\$MEDUSA_EXACT must be decode, tree or off, got 'on'"):
        options.from_environ({"MEDUSA_EXACT": "on"})
