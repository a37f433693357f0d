"""Hostile and unlucky inputs through the real commands (issue 36, items 1-3): each one is a
one-line `error: ...` with exit status 2, before anything large is allocated, never a
segfault, a hang, a traceback or a false success."""
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import support
from support import ROOT

from medusa import cli
from medusa.data import samples as data
from medusa.decoding.tree import load_choices
from medusa.heads import io as head_io
from medusa.model.config import ModelConfig
from medusa.runtime.errors import UsageError
from medusa.runtime.files import load_pickled_tensors, tensor_bytes
from medusa.training import hidden_cache


def refused(capsys, *argv) -> str:
    """Run `medusa ARGV` in this process; it must exit 2 with one `error:` line (returned)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(argv))
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def model_copy(tiny_pkl, tmp_path, family="qwen2", **config):
    """A copy of the converted tiny model with `config` merged into its config.json."""
    folder = shutil.copytree(tiny_pkl(family).parent, tmp_path / f"model-{family}")
    path = folder / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **config)))
    return folder / "model.pkl"


def generate(pkl, *extra, prompt="the cat sat"):
    return ["generate", "--jittor_base_weights", str(pkl), "--prompt", prompt, "--max_new_tokens", "8",
            "--device", "cpu", *extra]


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("field, value, says", [
    ("hidden_size", "64", "hidden_size must be a positive integer, got '64'"),
    ("hidden_size", 64.5, "hidden_size must be a positive integer, got 64.5"),
    ("vocab_size", -5, "vocab_size must be a positive integer, got -5"),
    ("num_hidden_layers", [3], "num_hidden_layers must be a positive integer, got [3]"),
    ("rope_scaling", "yes", "rope_scaling must be an object or null"),
    ("rms_norm_eps", -1, "rms_norm_eps must be a finite number > 0, got -1"),
    ("num_attention_heads", 5, "num_attention_heads=5 does not divide hidden_size=64"),
    ("tie_word_embeddings", "no", "tie_word_embeddings must be true or false"),
    ("eos_token_id", "5", "eos_token_id must be a token id"),
])
def test_bad_config_fields_are_named(capsys, tiny_pkl, tmp_path, field, value, says):
    pkl = model_copy(tiny_pkl, tmp_path, **{field: value})
    line = refused(capsys, *generate(pkl))
    assert says in line and "config.json" in line


def test_huge_config_is_refused_before_any_allocation(tiny_pkl, tmp_path):
    """num_hidden_layers = 10^9 used to allocate until the OOM killer came: now one line, in
    little memory (the child's peak RSS, measured by the kernel)."""
    pkl = model_copy(tiny_pkl, tmp_path, num_hidden_layers=1_000_000_000)
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "print(p.stderr.strip().splitlines()[-1])")
    start = time.time()
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "medusa", *generate(pkl)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120).stdout.splitlines()
    code, rss_kib = map(int, out[0].split())
    assert code == 2 and rss_kib < 2 * 2 ** 20 and time.time() - start < 60
    assert out[1].startswith("error: ") and "num_hidden_layers=1000000000" in out[1] and "GiB" in out[1]


def test_huge_config_is_refused_by_convert(capsys, tiny_hf, tmp_path):
    folder = shutil.copytree(tiny_hf("llama"), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=1_000_000_000)))
    line = refused(capsys, "convert", "--base_model_path", str(folder), "--output", str(tmp_path / "out" / "m.pkl"))
    assert "num_hidden_layers=1000000000" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", [*support.FAMILIES, "mistral", "sliced"])
def test_shapes_and_size_from_the_config_are_the_models(tiny_pkl, family):
    """The config is checked before a model is built, so the checks compute the model's
    tensors from the config alone: the same names and shapes as the model built from it."""
    from medusa.model import weights
    from medusa.model.transformer import Transformer

    d = weights.read_config(tiny_pkl("llama" if family in ("mistral", "sliced") else family)).to_dict()
    if family == "mistral":
        d.update(model_type="mistral", sliding_window=64)
    if family == "sliced":
        d.update(medusa_reduced_vocab={"kept_ids": list(range(0, 320, 3)), "embedding_sliced": True})
    cfg = ModelConfig.from_dict(d)
    model = Transformer(cfg, max_positions=1)
    flip = weights.transposed_names(model)
    built = {n: tuple(p.shape)[::-1] if n in flip else tuple(p.shape) for n, p in model.named_parameters()}
    assert weights.expected_shapes(cfg) == built
    assert cfg.parameter_count == sum(int(np.prod(s)) for s in built.values())


# ---------------------------------------------------------------- sliding windows
def test_mistral_sliding_window_shorter_than_the_request_is_refused(capsys, tiny_pkl, tmp_path):
    pkl = model_copy(tiny_pkl, tmp_path, "llama", model_type="mistral", sliding_window=8)
    line = refused(capsys, *generate(pkl))
    assert "sliding_window of 8" in line and "keep the sequence within 8 tokens" in line
    cfg = ModelConfig.from_json(pkl.parent / "config.json")
    assert cfg.sliding_window == 8
    # Qwen2 configs carry a sliding_window too, used only with use_sliding_window
    qwen = ModelConfig.from_dict(dict(cfg.to_dict(), model_type="qwen2", sliding_window=8, use_sliding_window=False))
    assert qwen.sliding_window is None


def test_mistral_within_its_window_decodes(capsys, tiny_pkl, tmp_path):
    pkl = model_copy(tiny_pkl, tmp_path, "llama", model_type="mistral", sliding_window=64)
    capsys.readouterr()
    cli.main(generate(pkl, "--json"))
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["output_ids"]) == 8


# ---------------------------------------------------------------- non-finite values
def test_nan_base_weights_are_named(capsys, tiny_pkl, tmp_path):
    pkl = model_copy(tiny_pkl, tmp_path)
    tensors = load_pickled_tensors(pkl)
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    pkl.write_bytes(tensor_bytes(tensors, ".pkl"))
    line = refused(capsys, *generate(pkl))
    assert str(pkl) in line and "tensor model.layers.1.mlp.up_proj.weight holds 1 NaN/inf" in line


def saved_heads(tiny_pkl, path, poison=None):
    from medusa.model.weights import load_model

    model = load_model(tiny_pkl("qwen2"), "float32")
    heads = support.random_heads(model, "medusa", share=True, num_heads=2)
    head_io.save_heads(heads, path)
    if poison:
        tensors = load_pickled_tensors(path)
        tensors[poison].reshape(-1)[0] = np.inf
        path.write_bytes(tensor_bytes(tensors, ".jtr"))
    return path


def test_inf_in_heads_is_named(capsys, tiny_pkl, tmp_path):
    heads = saved_heads(tiny_pkl, tmp_path / "heads.jtr", poison="blocks.1.0.linear.weight")
    line = refused(capsys, *generate(tiny_pkl("qwen2"), "--medusa_weights", str(heads), "--medusa_choices", "chain"))
    assert str(heads) in line and "tensor blocks.1.0.linear.weight holds 1 NaN/inf" in line


def test_tree_rank_beyond_every_head_is_refused_at_once(capsys, tiny_pkl, tmp_path):
    """[[0], [1000000]] on a 320-token vocabulary hung in top-k for minutes."""
    heads = saved_heads(tiny_pkl, tmp_path / "heads.jtr")
    tree = tmp_path / "tree.json"
    tree.write_text("[[0], [1000000]]")
    start = time.time()
    line = refused(capsys, *generate(tiny_pkl("qwen2"), "--medusa_weights", str(heads), "--medusa_choices", str(tree)))
    assert "rank 1000000" in line and str(tree) in line and time.time() - start < 30
    with pytest.raises(UsageError, match="rank 150, beyond the 100 candidates.*vocabulary of 100 tokens"):
        load_choices([[0], [150]], num_heads=2, vocab_size=100)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UsageError, match="nested too deeply|entries must be non-negative ints"):
        load_choices(str(deep))


def cache_of(tiny_pkl, tmp_path):
    from medusa.model.weights import load_model

    model = load_model(tiny_pkl("qwen2"), "float32")
    rng = np.random.default_rng(0)
    items = [data.Sample(rng.integers(6, 300, n).astype(np.int32), np.ones(n, np.int32)) for n in (5, 9, 7)]
    hidden_cache.save(tmp_path / "cache", model, items, 0)
    return tmp_path / "cache", items


def test_nan_or_truncation_in_the_hidden_cache_is_an_error(tiny_pkl, tmp_path):
    folder, items = cache_of(tiny_pkl, tmp_path)
    assert [len(h) for h in hidden_cache.load(folder, items)] == [5, 9, 7]
    hidden = np.load(folder / "hidden.npy", mmap_mode="r+")
    hidden[11, 3] = np.nan
    hidden.flush()
    del hidden
    with pytest.raises(UsageError, match=r"hidden.npy: tensor hidden holds NaN/inf at row 11 \(sample 1\)"):
        hidden_cache.load(folder, items)
    raw = (folder / "hidden.npy").read_bytes()
    (folder / "hidden.npy").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(UsageError, match="unreadable hidden-state cache.*delete the folder"):
        hidden_cache.load(folder, items)


# ---------------------------------------------------------------- training data
def token_file(path, ids, lengths, mask=None):
    ids = np.asarray(ids, np.int64)
    np.savez_compressed(path, input_ids=ids, loss_mask=np.ones(len(ids), np.int8) if mask is None else mask,
                        lengths=np.asarray(lengths, np.int64), groups=np.arange(len(lengths)),
                        temperature=np.zeros(len(lengths), np.float32), meta=np.array(json.dumps({"pad_id": 0})))
    return path


def train(tiny_pkl, tmp_path, data_path):
    return ["train", "--jittor_base_weights", str(tiny_pkl("qwen2")), "--data_path", str(data_path),
            "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache"), "--medusa_num_heads", "2",
            "--epochs", "1", "--batch_size", "2", "--device", "cpu", "--max_length", "64", "--val_ratio", "0.2"]


def test_token_ids_outside_the_vocabulary_are_refused_not_a_segfault(capsys, tiny_pkl, tmp_path):
    good = list(range(6, 16))
    big = token_file(tmp_path / "big.npz", good * 3 + [400] + good, [10, 10, 10, 11])
    line = refused(capsys, *train(tiny_pkl, tmp_path, big))
    assert "training sample 3 holds token id 400, outside the model's vocabulary of 320" in line
    negative = token_file(tmp_path / "neg.npz", [-3] + good[1:] + good * 3, [10] * 4)
    assert "token id -3 at position 0" in refused(capsys, *train(tiny_pkl, tmp_path, negative))
    with pytest.raises(UsageError, match="token id 400 at position 30 is outside the vocabulary of 320"):
        data.load_token_samples(big, vocab_size=320)


def test_negative_lengths_are_refused(tmp_path):
    path = token_file(tmp_path / "len.npz", list(range(6, 16)), [12, -2])
    with pytest.raises(UsageError, match="sample 1 has negative length -2"):
        data.load_token_samples(path)


def test_npz_member_claiming_more_than_the_file_holds(tmp_path):
    import zipfile

    path = token_file(tmp_path / "ok.npz", list(range(6, 16)), [10])
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = members["input_ids.npy"]
    members["input_ids.npy"] = header.replace(b"(10,)", b"(10000000000000,)".ljust(5))
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    with pytest.raises(UsageError, match=r"member input_ids claims shape \(10000000000000,\)"):
        data.load_token_samples(tmp_path / "bad.npz")


def test_oversized_data_line_is_refused_in_little_memory(capsys, tiny_pkl, tmp_path):
    path = support.chat_file(tmp_path / "chat.jsonl", n=8)
    with open(path, "a") as f:
        f.write(json.dumps({"conversations": [{"from": "human", "value": "hi " * 700_000},
                                              {"from": "gpt", "value": "ok"}]}) + "\n")
    line = refused(capsys, *train(tiny_pkl, tmp_path, path))
    assert "line 9 is 2.0 MiB, over the limit of 1 MiB" in line


def test_oversized_prompt_and_template_are_refused(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": 1, "category": "x", "prompt": "a" * (data.MAX_PROMPT_CHARS + 1)}) + "\n")
    with pytest.raises(UsageError, match="line 1: the prompt is 262145 characters, over the limit"):
        data.load_prompts(prompts)
    tok = support.make_tokenizer(chat_template="{{ 'x' }}" * 10_000)
    with pytest.raises(UsageError, match="chat template is 90000 characters"):
        data.chat_prompt_ids(tok, [{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------- GGUF headers
def test_gguf_counts_beyond_the_file_are_refused(capsys, tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (2 ** 60).to_bytes(8, "little")
                     + (2 ** 60).to_bytes(8, "little") + b"\0" * 64)
    line = refused(capsys, "convert", "--base_model_path", str(path), "--output", str(tmp_path / "o" / "m.pkl"))
    assert "claims 1152921504606846976 tensors" in line and "truncated or corrupt" in line
