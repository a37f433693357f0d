"""Files that cannot run code, cannot be half-written and cannot be silently replaced: tensor
files read by a restricted unpickler or as safetensors, converted models as one unit."""
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from support import ROOT

import medusa.runtime.options as options
from medusa.heads import io as head_io
from medusa.model import weights
from medusa.runtime import files
from medusa.runtime.errors import UsageError


class Payload:
    """Unpickling this runs os.system: what a crafted weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_pickle(path, marker):
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": np.zeros(2), "x": Payload(marker)}))
    return path


def test_every_loader_refuses_a_pickle_that_runs_code(tiny_pkl, tmp_path):
    from medusa.heads.families import HeadConfig, build_heads

    marker = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_pkl("llama").parent, model_dir)
    evil_pickle(model_dir / "model.pkl", marker)
    heads = head_io.save_heads(build_heads(HeadConfig(num_heads=2, hidden_size=64, vocab_size=320)), tmp_path / "h.jtr")
    evil_pickle(heads, marker)
    for load in (lambda: weights.load_model(model_dir / "model.pkl", "float32"),
                 lambda: weights.read_checkpoint(model_dir),
                 lambda: head_io.load_heads(heads),
                 lambda: files.load_tensors(heads)):
        with pytest.raises(files.UnsafePickleError, match="posix.system|os.system"):
            load()
    assert not marker.exists()
    # and through the real command line: one line, exit 2, nothing ran
    out = subprocess.run([sys.executable, "-m", "medusa", "generate", "--jittor_base_weights", str(tiny_pkl("llama")),
                          "--medusa_weights", str(heads), "--medusa_choices", "chain", "--prompt", "hi"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 2 and "refused to load" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


def test_training_state_with_an_object_array_is_refused(tmp_path):
    path = tmp_path / "last_state.npz"
    np.savez(path, meta=np.array("{}"), evil=np.array([Payload(tmp_path / "pwned")], dtype=object))
    with np.load(path, allow_pickle=False) as f, pytest.raises(ValueError, match="allow_pickle"):
        f["evil"]                                   # what Trainer.load_state relies on
    assert not (tmp_path / "pwned").exists()


def test_plain_pickles_of_arrays_still_load(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.ones(3, np.float32)}
    for suffix in (".pkl", ".safetensors"):
        path = tmp_path / f"t{suffix}"
        path.write_bytes(files.tensor_bytes(arrays, suffix, {"config": "{}"}))
        got = files.load_tensors(path)
        assert set(got) == {"a", "b"} and all(np.array_equal(got[k], arrays[k]) for k in arrays)


def test_heads_round_trip_as_safetensors(tmp_path):
    from medusa.heads.families import HeadConfig, build_heads

    heads = build_heads(HeadConfig(family="rnn", num_heads=2, hidden_size=16, vocab_size=40))
    path = head_io.save_heads(heads, tmp_path / "heads.safetensors")
    back = head_io.load_heads(path)
    for (n, p), (_, q) in zip(heads.named_parameters(), back.named_parameters()):
        assert np.array_equal(p.numpy(), q.numpy()), n


# ---------------------------------------------------------------- converted models as one unit
def test_safetensors_conversion_loads_like_the_pickle(tiny_hf, tmp_path):
    out = weights.convert(tiny_hf("qwen3"), tmp_path / "st" / "model.safetensors", "float32")
    a = weights.load_model(out, "float32")
    b = weights.load_model(tiny_hf("qwen3"), "float32")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p.numpy(), q.numpy()), n
    assert (out.parent / "tokenizer.json").is_file()


def test_a_folder_refuses_a_second_different_model(tiny_hf, tmp_path):
    weights.convert(tiny_hf("llama"), tmp_path / "m" / "model.pkl", "float32")
    before = (tmp_path / "m" / "config.json").read_text()
    with pytest.raises(UsageError, match="already holds a different model"):
        weights.convert(tiny_hf("qwen2"), tmp_path / "m" / "other.pkl", "float32")
    assert (tmp_path / "m" / "config.json").read_text() == before and not (tmp_path / "m" / "other.pkl").exists()
    weights.convert(tiny_hf("llama"), tmp_path / "m" / "model-fp16.pkl", "float16")   # same model, other dtype: fine


def test_no_tokenizer_is_made_up(tiny_hf, tmp_path):
    src = tmp_path / "bare"
    shutil.copytree(tiny_hf("llama"), src)
    for f in src.iterdir():
        if "token" in f.name or f.name == "chat_template.jinja":
            f.unlink()
    fresh = weights.convert(src, tmp_path / "fresh" / "model.pkl", "float32")
    assert not (fresh.parent / "tokenizer.json").exists()
    good = weights.convert(tiny_hf("llama"), tmp_path / "good" / "model.pkl", "float32")
    tok_before = (good.parent / "tokenizer.json").read_bytes()
    weights.convert(src, good, "float32")                   # re-convert from the bare source
    assert (good.parent / "tokenizer.json").read_bytes() == tok_before


def test_a_failed_conversion_leaves_the_old_unit_or_nothing(tiny_hf, tmp_path, monkeypatch):
    def fail(*_):
        raise RuntimeError("killed here")

    monkeypatch.setattr(weights, "save_tokenizer", fail)
    with pytest.raises(RuntimeError):
        weights.convert(tiny_hf("llama"), tmp_path / "new" / "model.pkl", "float32")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.converting-*"))


@pytest.mark.e2e
def test_a_killed_conversion_subprocess_leaves_a_whole_unit_or_none(tiny_hf, tmp_path):
    """SIGKILL at several moments of `weight_convert.py`: the folder is absent or complete."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for i, delay in enumerate((1.0, 2.5, 4.0, 6.0)):
        out = tmp_path / f"k{i}" / "model.pkl"
        proc = subprocess.Popen([sys.executable, str(ROOT / "weight_convert.py"), "--base_model_path",
                                 str(tiny_hf("qwen2")), "--output", str(out), "--dtype", "float32"],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if out.parent.exists():
            assert {"model.pkl", "config.json", "tokenizer.json"} <= {f.name for f in out.parent.iterdir()}
            weights.load_model(out, "float32")


def test_two_conversions_at_once_do_not_remove_each_others_stage(tiny_hf, tmp_path):
    """Two benchmarks started together on a fresh machine both convert the default model: the
    second must not delete the first's staging folder (it did: FileNotFoundError in the first),
    and whichever installs second finds the unit there and fills it in."""
    out = tmp_path / "unit" / "model.pkl"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other = tmp_path / f".unit.converting-{os.getppid()}"           # a live process's conversion
    stale = tmp_path / f".unit.converting-{int(dead.stdout)}"       # a finished one's
    for d in (other, stale):
        d.mkdir()
        (d / "model.pkl").write_bytes(b"partial")
    weights.convert(tiny_hf("qwen2"), out, "float32")
    assert other.is_dir() and not stale.exists()
    # the live one finishes after us: its stage installs into the existing unit
    shutil.rmtree(other)
    shutil.copytree(out.parent, other)
    weights._install(other, out.parent, "model.pkl")
    assert {"model.pkl", "config.json", "tokenizer.json"} <= {f.name for f in out.parent.iterdir()}
    weights.load_model(out, "float32")


def test_default_model_counts_only_when_complete(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(weights, "convert", lambda src, out, dtype: calls.append(out))
    monkeypatch.setattr(weights, "default_gguf_path", lambda: tmp_path / "x.gguf")
    with options.override(jittor_home=str(tmp_path)):
        folder = weights.default_model_dir()
        folder.mkdir(parents=True)
        (folder / "model.pkl").write_bytes(b"")
        (folder / "config.json").write_text("{}")
        weights.ensure_default_model("float16", verbose=False)   # no tokenizer.json: not done
        assert len(calls) == 1
        (folder / "tokenizer.json").write_text("{}")
        weights.ensure_default_model("float16", verbose=False)
    assert len(calls) == 1


def test_hidden_cache_key_follows_the_weights_not_the_folder(tiny_hf, tmp_path):
    from safetensors.numpy import load_file, save_file

    from medusa.training.hidden_cache import cache_key

    folder = tmp_path / "hf"
    shutil.copytree(tiny_hf("llama"), folder)
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    before = cache_key(data, folder, 64, "tokenizer", "float32")
    st = folder / "model.safetensors"
    tensors = load_file(str(st))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2          # same names, shapes and size
    save_file(tensors, str(st), metadata={"format": "pt"})
    assert cache_key(data, folder, 64, "tokenizer", "float32") != before


def test_gguf_conversions_are_keyed_on_content(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(weights, "convert", lambda src, out, dtype: made.append(out))
    for i, payload in enumerate((b"first model", b"second model")):
        gguf = tmp_path / f"dir{i}" / "model.gguf"            # the same file name, other content
        gguf.parent.mkdir()
        gguf.write_bytes(payload)
        with options.override(jittor_home=str(tmp_path / "home")):
            weights.resolve_model(str(gguf), None, "float32")
    assert len(made) == 2 and made[0].parent != made[1].parent


def test_resume_without_a_saved_state_says_so(tiny_pkl, tmp_path):
    from support import tiny_args

    from medusa.training import trainer as training

    trainer = training.Trainer(tiny_args(tiny_pkl, tmp_path, resume=True))
    with pytest.raises(UsageError, match="nothing to resume"):
        trainer.fit()
