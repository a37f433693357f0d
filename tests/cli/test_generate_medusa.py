"""End to end: `python -m medusa generate --medusa_weights`, weight_convert.py on FasterDecoding
heads, and greedy Medusa == plain greedy on the real SmolLM2 (slow)."""
import json

import numpy as np
import pytest

from medusa.cli import generate
from medusa.decoding import core
from medusa.decoding.loop import medusa_generate
from medusa.heads import io as head_io
from medusa.heads.families import HeadConfig, build_heads
from medusa.model import weights
from medusa.runtime.backend import jt

H, V, K = 64, 320, 4   # the tiny models' sizes (tests/support.py)


def cli_json(capsys, argv):
    generate.main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_medusa_matches_plain_greedy(tiny_pkl, tmp_path, capsys):
    pkl = tiny_pkl("qwen2")
    jt.set_global_seed(0)
    heads = build_heads(HeadConfig(num_heads=K, hidden_size=H, vocab_size=V))
    heads.init_from_base(weights.load_model(pkl, "float32").lm_head_t())
    jtr = head_io.save_heads(heads, tmp_path / "heads.jtr")
    base = ["--jittor_base_weights", str(pkl), "--prompt", "the cat sat on", "--max_new_tokens", "20",
            "--json", "--greedy", "--device", "cpu"]
    plain = cli_json(capsys, base)
    medusa = cli_json(capsys, base + ["--medusa_weights", str(jtr), "--medusa_choices", "8_node"])
    assert medusa["output_ids"] == plain["output_ids"] and medusa["text"] == plain["text"]
    assert sum(medusa["accept_lengths"]) + 1 == len(medusa["output_ids"])
    assert medusa["compression_ratio"] == len(medusa["output_ids"]) / len(medusa["accept_lengths"])
    assert medusa["tokens_per_second"] > 0
    for mode in ("sample", "typical"):  # sampled Medusa from the CLI: reproducible with a seed
        sampled = base[:-3] + ["--temperature", "0.8", "--sampling_mode", mode, "--seed", "3",
                               "--medusa_weights", str(jtr)]
        first = cli_json(capsys, sampled)
        assert cli_json(capsys, sampled)["output_ids"] == first["output_ids"]
        assert sum(first["accept_lengths"]) + 1 == len(first["output_ids"])


def fasterdecoding_state(num_heads, hidden, vocab, seed=0):
    """A state dict shaped like FasterDecoding's medusa_lm_head.pt (one ResBlock per head)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(num_heads):
        state[f"{i}.0.linear.weight"] = torch.randn(hidden, hidden, generator=g) * 0.01
        state[f"{i}.0.linear.bias"] = torch.zeros(hidden)
        state[f"{i}.1.weight"] = torch.randn(vocab, hidden, generator=g) * 0.1
    return state


def test_weight_convert_fasterdecoding_heads(tiny_pkl, tmp_path):
    torch = pytest.importorskip("torch")
    import weight_convert

    pt = tmp_path / "medusa_lm_head.pt"
    torch.save(fasterdecoding_state(K, H, V), pt)
    out = tmp_path / "converted.jtr"
    weight_convert.main(["--medusa_weights", str(pt), "--output", str(out)])
    heads = head_io.load_heads(out)
    assert (heads.config.num_heads, heads.config.num_layers, heads.config.share_lm_head) == (K, 1, False)
    w = dict(heads.named_parameters())["lm_heads.2.weight"].numpy()     # [in, out] in memory
    np.testing.assert_allclose(w.T, fasterdecoding_state(K, H, V)["2.1.weight"].numpy(), rtol=1e-6)

    model = weights.load_model(tiny_pkl("qwen2"), "float32")
    out_ids = medusa_generate(model, heads, [7, 8, 9, 10], 12, "8_node").output_ids
    assert out_ids == core.generate(model, [7, 8, 9, 10], 12).output_ids

    bad = fasterdecoding_state(K, H, V)
    bad["1.0.linear.weight"] = torch.zeros(H, H + 1)
    torch.save(bad, pt)
    with pytest.raises(ValueError, match="blocks.1.0.linear.weight"):
        weight_convert.main(["--medusa_weights", str(pt), "--output", str(tmp_path / "bad.jtr")])
    short = {k: v for k, v in fasterdecoding_state(K, H, V).items() if not k.startswith("3.1.")}
    torch.save(short, pt)
    with pytest.raises(ValueError, match="vocab projections"):
        weight_convert.main(["--medusa_weights", str(pt), "--output", str(tmp_path / "bad.jtr")])


@pytest.mark.slow
@pytest.mark.e2e
def test_smollm2_greedy_medusa_matches_plain(smollm2_pkl):
    model = weights.load_model(smollm2_pkl, "float32")
    cfg = model.config
    jt.set_global_seed(0)
    heads = build_heads(HeadConfig(num_heads=K, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                                   share_lm_head=True))
    tok = weights.load_tokenizer(smollm2_pkl)
    for text, tree in (("The capital of France is", "8_node"), ("def fibonacci(n):", "16_node")):
        ids = tok(text)["input_ids"]
        plain = core.generate(model, ids, 24).output_ids
        assert medusa_generate(model, heads, ids, 24, tree).output_ids == plain, (text, tree)
