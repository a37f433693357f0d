"""Head training (medusa/training.py) on the tiny random models: label alignment, loss masks,
padding invariance, loss going down for every family, exact resume, bad data."""
import dataclasses
import json

import numpy as np
import pytest

from medusa import data, hidden_cache, optim, training, weights
from medusa.data import Sample

WORDS = "hello there how are you the cat sat on mat one two three four five six sea".split()


def chat_file(path, n=24, seed=0, extra=()):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        ask = " ".join(rng.choice(WORDS, 4))
        reply = " ".join(rng.choice(WORDS[:8], int(rng.integers(6, 14))))   # a small, learnable language
        lines.append({"conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": reply}]})
    path.write_text("".join(json.dumps(x) + "\n" for x in list(lines) + list(extra)))
    return path


def tiny_args(tiny_pkl, tmp_path, family="medusa", **kw):
    base = dict(jittor_base_weights=str(tiny_pkl("qwen2")), data_path=str(chat_file(tmp_path / "chat.jsonl")),
                output_dir=str(tmp_path / f"out-{family}"), cache_dir=str(tmp_path / "cache"),
                family=family, medusa_num_heads=3, epochs=2, batch_size=4, lr=1e-2, warmup_ratio=0.1,
                max_length=64, val_ratio=0.2, device="cpu", moe_num_experts=3, moe_top_k=2)
    return training.TrainArgs(**dict(base, **kw))


def test_rows_align_head_k_at_t_with_token_t_plus_k_plus_2():
    ids = np.arange(100, 110, dtype=np.int32)
    mask = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], np.int32)
    fake_hidden = [np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)]   # h[t] = t
    h, drafted, targets, valid = training.flat_rows([Sample(ids, mask)], fake_hidden, 3, pad_id=0)
    t = h.numpy()[0, :, 0].astype(int)                      # the position of each row
    for k in range(3):
        rows = valid[k].astype(bool)
        assert (targets[k][rows] == ids[t[rows] + k + 2]).all()
        assert (mask[t[rows] + k + 2] == 1).all()
        inside = t + k + 1 < len(ids)
        assert (drafted.numpy()[0, inside, k] == ids[t[inside] + k + 1]).all()
    assert t.min() == 0 and t.max() == 7     # head 1 at t=0 reads token 3 (the first answer), head 0 at t=7 the last


def test_loss_mask_covers_assistant_tokens_only(tiny_pkl):
    tok = weights.load_tokenizer(tiny_pkl("qwen2"))
    msgs = [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "the cat sat"}]
    s = data.encode_messages(msgs, tok, 64)
    assert tok.decode(s.input_ids[s.loss_mask == 1]).replace(" ", "") == "thecatsat<|im_end|>"


def test_padding_does_not_change_per_sample_loss(tiny_pkl, tmp_path):
    args = tiny_args(tiny_pkl, tmp_path, cache_hidden=False)
    tr = training.Trainer(args)
    short, long_ = sorted(range(len(tr.samples)), key=lambda i: len(tr.samples[i]))[::len(tr.samples) - 1]
    assert len(tr.samples[short]) < len(tr.samples[long_])
    alone = tr.forward([short])
    padded = tr.forward([short, long_])
    n_short = alone[4]
    # sums over the short sample's rows = sums over the batch minus the long sample's
    only_long = tr.forward([long_])
    np.testing.assert_allclose(alone[0].numpy(), padded[0].numpy() - only_long[0].numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(n_short + only_long[4], padded[4])


@pytest.mark.parametrize("family", ["medusa", "rnn", "moe"])
def test_a_few_steps_lower_the_loss(tiny_pkl, tmp_path, family):
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, family, epochs=3, val_ratio=0.0))
    before = tr.evaluate_on(tr.train_set)
    tr.fit()
    after = tr.evaluate_on(tr.train_set)
    for k in range(3):
        assert after[f"head{k}_loss"] < before[f"head{k}_loss"], (family, k, before, after)
    records = [json.loads(line) for line in (tr.args.out_dir() / "metrics.jsonl").read_text().splitlines()]
    assert {"head0_top1", "head2_top5", "lr", "loss"} <= set(records[-1])
    assert (tr.args.out_dir() / "best.jtr").is_file()


def test_resume_continues_from_same_step_and_optimizer_state(tiny_pkl, tmp_path):
    full = training.Trainer(tiny_args(tiny_pkl, tmp_path, output_dir=str(tmp_path / "full")))
    full.fit()
    training.Trainer(tiny_args(tiny_pkl, tmp_path, output_dir=str(tmp_path / "cut"), max_steps=5)).fit()
    resumed = training.Trainer(tiny_args(tiny_pkl, tmp_path, output_dir=str(tmp_path / "cut"), resume=True))
    resumed.fit()                                   # --resume: loads last.jtr + last_state.pkl, goes on
    assert resumed.step == full.step == 8 and resumed.opt.steps == full.opt.steps == 8
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and 5 in steps and 8 in steps   # no step trained twice
    for p, q in zip(full.heads.parameters(), resumed.heads.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_records_are_skipped_with_counts_and_empty_data_is_an_error(tiny_pkl, tmp_path):
    bad = [{"conversations": []}, {"id": 3}, {"messages": [{"role": "user", "content": "hi"}]},
           {"conversations": [{"from": "human", "value": "one two " * 80}, {"from": "gpt", "value": "late"}]}]
    args = tiny_args(tiny_pkl, tmp_path, cache_hidden=False)
    chat_file(tmp_path / "chat.jsonl", extra=bad)
    args.data_path = str(tmp_path / "chat.jsonl")
    tr = training.Trainer(args)
    assert tr.report.kept == 24 and sum(tr.report.skipped.values()) == 4
    assert {"empty_conversation", "no_messages_field", "no_assistant_turn", "no_loss_tokens"} <= set(tr.report.skipped)
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(x) + "\n" for x in bad))
    with pytest.raises(data.DataError, match="no usable records"):
        training.Trainer(tiny_args(tiny_pkl, tmp_path, data_path=str(tmp_path / "bad.jsonl")))


def test_hidden_cache_matches_the_base_and_rejects_other_data(tiny_pkl, tmp_path):
    model = weights.load_model(tiny_pkl("qwen2"), "float32")
    rng = np.random.default_rng(0)
    samples = [Sample(rng.integers(6, 300, n).astype(np.int32), np.ones(n, np.int32)) for n in (5, 9, 7)]
    path = tmp_path / "c.npz"
    cached = hidden_cache.load_or_build(model, samples, path, pad_id=0)
    for s, h in zip(samples, cached):
        ref = hidden_cache.base_hidden(model, [s], 0).numpy()[0]
        np.testing.assert_allclose(h.astype(np.float32), ref, atol=2e-2, rtol=1e-2)   # fp16 storage
    with pytest.raises(ValueError, match="does not match"):
        hidden_cache.load(path, samples[:2])


def test_lr_warms_up_then_decays_to_zero():
    lrs = [optim.lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3


def test_adamw_counts_optimizer_steps_under_accumulation():
    from medusa.runtime import jt

    w = jt.array(np.array([1.0, -2.0], np.float32))
    opt = optim.AdamW([w], lr=0.1, weight_decay=0.5)
    ref_w, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t in (1, 2):
        g = np.zeros(2)
        for scale in (1.0, 3.0):                   # two accumulated micro-batches
            opt.backward((w * w).sum() * scale)
            g += 2 * ref_w * scale
        opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        ref_w = ref_w * (1 - 0.1 * 0.5) - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-5)
    assert opt.steps == 2


@pytest.mark.parametrize("family", ["medusa", "moe"])
def test_every_flag_has_help(family, capsys):
    with pytest.raises(SystemExit):
        training.parse_args(["--help"], family)
    text = "".join(capsys.readouterr().out.split())   # argparse wraps lines (and after hyphens)
    for f in dataclasses.fields(training.TrainArgs):
        if f.name == "family" or (f.name in training.MOE_ONLY and family != "moe"):
            continue
        assert f"--{f.name}" in text and "".join(training.HELP[f.name].split()) in text, f.name
