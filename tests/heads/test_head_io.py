"""Head weights on disk: .jtr round trip, strict loading, FasterDecoding Medusa import."""
import json
import pickle

import numpy as np
import pytest

from medusa.heads.families import HEAD_FAMILIES, HeadConfig, build_heads
from medusa.heads.io import config_path, import_fasterdecoding_heads, load_heads, save_heads
from medusa.runtime.backend import jt

H, V, K, B, T = 16, 40, 3, 2, 4


def make(family, share=False, num_layers=2, **kw):
    jt.set_global_seed(1)
    return build_heads(HeadConfig(family=family, num_heads=K, num_layers=num_layers, hidden_size=H,
                                  vocab_size=V, share_lm_head=share, **kw))


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((B, T, H)).astype("float32")
    tokens = rng.integers(0, V, (B, T, K)).astype("int32")
    lm = (rng.standard_normal((H, V)) / np.sqrt(H)).astype("float32")
    emb = rng.standard_normal((V, H)).astype("float32")
    return jt.array(hidden), jt.array(tokens), jt.array(lm), jt.array(emb)


def randomise(heads, seed=2):
    """Non-trivial weights (zero-initialised ResBlocks would make a weak round-trip test)."""
    rng = np.random.default_rng(seed)
    for _, p in heads.named_parameters():
        p.assign(jt.array(rng.standard_normal(p.shape).astype("float32") * 0.1))


@pytest.mark.parametrize("share,prefix", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("family", sorted(HEAD_FAMILIES))
def test_save_load_round_trip(tmp_path, family, share, prefix):
    heads = make(family, share, prefix_layer=prefix)
    randomise(heads)
    path = save_heads(heads, tmp_path / "heads.jtr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.jtr", "heads_config.json"]
    assert json.loads(config_path(path).read_text()) == heads.config.to_dict()
    loaded = load_heads(path)
    assert loaded.config == heads.config and type(loaded) is type(heads)
    a, b = dict(heads.named_parameters()), dict(loaded.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)
    args = inputs()
    np.testing.assert_array_equal(heads(*args)[0].numpy(), loaded(*args)[0].numpy())


def saved(tmp_path, edit=None, edit_config=None):
    path = save_heads(make("medusa"), tmp_path / "heads.jtr")
    if edit:
        tensors = pickle.loads(path.read_bytes())
        edit(tensors)
        path.write_bytes(pickle.dumps(tensors))
    if edit_config:
        cfg = json.loads(config_path(path).read_text())
        edit_config(cfg)
        config_path(path).write_text(json.dumps(cfg))
    return path


def test_load_rejects_missing_tensor(tmp_path):
    path = saved(tmp_path, edit=lambda t: t.pop("blocks.1.0.linear.bias"))
    with pytest.raises(ValueError, match=r"heads\.jtr: missing tensor.*blocks\.1\.0\.linear\.bias"):
        load_heads(path)


def test_load_rejects_unexpected_tensor(tmp_path):
    path = saved(tmp_path, edit=lambda t: t.update({"blocks.0.9.linear.weight": np.zeros((H, H), "float32")}))
    with pytest.raises(ValueError, match=r"heads\.jtr: unexpected tensor.*blocks\.0\.9\.linear\.weight"):
        load_heads(path)


def test_load_rejects_wrong_shape(tmp_path):
    path = saved(tmp_path, edit=lambda t: t.update({"lm_heads.2.weight": np.zeros((V + 1, H), "float32")}))
    with pytest.raises(ValueError, match=rf"heads\.jtr: tensor lm_heads\.2\.weight has shape \({V + 1}, {H}\), "
                                         rf"expected \({V}, {H}\)"):
        load_heads(path)


def test_load_rejects_head_count_mismatch(tmp_path):
    path = saved(tmp_path, edit_config=lambda c: c.update(num_heads=K + 1))
    with pytest.raises(ValueError, match=rf"heads\.jtr: holds weights for {K} heads.*num_heads={K + 1}"):
        load_heads(path)


def test_load_rejects_bad_or_missing_config(tmp_path):
    path = saved(tmp_path, edit_config=lambda c: c.update(family="eagle"))
    with pytest.raises(ValueError, match="heads_config.json: bad head config: unknown head family"):
        load_heads(path)
    config_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="heads_config.json"):
        load_heads(path)


# ---------------------------------------------------------------- FasterDecoding import
try:
    import torch
except ImportError:  # the import tests need torch to write the files; the rest does not
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def fasterdecoding_heads(num_heads, num_layers):
    """The module FasterDecoding/Medusa saves, rebuilt in torch with its key layout."""
    class TorchResBlock(torch.nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.linear = torch.nn.Linear(hidden, hidden)
            self.act = torch.nn.SiLU()

        def forward(self, x):
            return x + self.act(self.linear(x))

    torch.manual_seed(0)
    return torch.nn.ModuleList([
        torch.nn.Sequential(*[TorchResBlock(H) for _ in range(num_layers)], torch.nn.Linear(H, V, bias=False))
        for _ in range(num_heads)])


@needs_torch
def test_import_fasterdecoding_pt(tmp_path):
    ref = fasterdecoding_heads(num_heads=4, num_layers=2)
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 5, "medusa_num_layers": 1}))
    torch.save(ref.state_dict(), tmp_path / "medusa_lm_head.pt")
    heads = import_fasterdecoding_heads(tmp_path)  # the folder; its (wrong) config.json is ignored
    cfg = heads.config
    assert (cfg.family, cfg.num_heads, cfg.num_layers, cfg.share_lm_head) == ("medusa", 4, 2, False)
    hidden = inputs()[0]
    with torch.no_grad():
        expected = torch.stack([head(torch.from_numpy(hidden.numpy())) for head in ref]).numpy()
    np.testing.assert_allclose(heads(hidden)[0].numpy(), expected, rtol=1e-5, atol=1e-5)


@needs_torch
def test_import_fasterdecoding_safetensors_without_vocab_projection(tmp_path):
    from safetensors.torch import save_file

    ref = fasterdecoding_heads(num_heads=3, num_layers=1)
    state = {k: v.to(torch.bfloat16) for k, v in ref.state_dict().items() if not k.endswith(".1.weight")}
    save_file(state, tmp_path / "medusa_lm_head.safetensors")
    hidden, _, lm, _ = inputs()
    with pytest.raises(ValueError, match="need base_lm_head_t"):
        import_fasterdecoding_heads(tmp_path / "medusa_lm_head.safetensors")
    heads = import_fasterdecoding_heads(tmp_path / "medusa_lm_head.safetensors", lm)
    cfg = heads.config
    assert (cfg.num_heads, cfg.num_layers, cfg.share_lm_head) == (3, 1, True)
    h = torch.from_numpy(hidden.numpy())
    with torch.no_grad():
        blocks = [block.to(torch.bfloat16).float() for block in (head[0] for head in ref)]
        expected = torch.stack([b(h) @ torch.from_numpy(lm.numpy()) for b in blocks]).numpy()
    np.testing.assert_allclose(heads(hidden, lm_head_t=lm)[0].numpy(), expected, rtol=1e-4, atol=1e-4)


@needs_torch
def test_import_rejects_inconsistent_files(tmp_path):
    state = fasterdecoding_heads(num_heads=2, num_layers=2).state_dict()
    bad = {k: v for k, v in state.items() if not k.startswith("1.1.")}
    torch.save(bad, tmp_path / "uneven.pt")
    with pytest.raises(ValueError, match=r"uneven\.pt: head 1 has ResBlocks \[0\]"):
        import_fasterdecoding_heads(tmp_path / "uneven.pt")
    torch.save({**state, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt: unexpected tensor extra\.weight"):
        import_fasterdecoding_heads(tmp_path / "extra.pt")
    torch.save(state, tmp_path / "ok.pt")
    with pytest.raises(ValueError, match=r"base_lm_head_t has shape"):
        import_fasterdecoding_heads(tmp_path / "ok.pt", np.zeros((H, V + 1), "float32"))


def test_fp16_storage_halves_the_file_and_loads_as_fp32(tmp_path):
    import subprocess
    import sys

    heads = make("moe", share=True)
    randomise(heads)
    full = save_heads(heads, tmp_path / "full.jtr")
    out = subprocess.run([sys.executable, "-m", "medusa", "heads", str(full), str(tmp_path / "half.jtr")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    half = tmp_path / "half.jtr"
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert {v.dtype for v in pickle.loads(half.read_bytes()).values()} == {np.dtype("float16")}
    loaded = load_heads(half)
    for (name, p), q in zip(heads.named_parameters(), loaded.parameters()):
        assert q.dtype == "float32"
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=2 ** -10, atol=1e-7, err_msg=name)
    again = subprocess.run([sys.executable, "-m", "medusa", "heads", str(full), str(half)], capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="float32 or float16"):
        save_heads(heads, tmp_path / "x.jtr", dtype="int8")
