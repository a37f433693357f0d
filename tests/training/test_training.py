"""Head training (medusa/training/: trainer, args, losses, state; medusa/cli/train.py) on the tiny
random models: label alignment, loss masks, padding invariance, loss going down for every family,
exact resume, bad data, and the flags (the base model ones shared with every command)."""
import dataclasses
import json

import numpy as np
import pytest
from support import chat_file, tiny_args

from medusa.cli import train as train_cmd
from medusa.data import samples as data
from medusa.data.samples import Sample
from medusa.model import weights
from medusa.runtime.backend import jt
from medusa.training import args as train_args
from medusa.training import hidden_cache, losses, optim
from medusa.training import state as run_state
from medusa.training import trainer as training


def test_rows_align_head_k_at_t_with_token_t_plus_k_plus_2():
    ids = np.arange(100, 110, dtype=np.int32)
    mask = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1], np.int32)
    fake_hidden = [np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)]   # h[t] = t
    h, drafted, targets, valid, _ = losses.flat_rows([Sample(ids, mask)], fake_hidden, 3, pad_id=0)
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


@pytest.mark.parametrize("prefix", [False, True])
def test_padding_does_not_change_per_sample_loss(tiny_pkl, tmp_path, prefix):
    args = tiny_args(tiny_pkl, tmp_path, "rnn" if prefix else "medusa", cache_hidden=prefix, prefix_layer=prefix)
    tr = training.Trainer(args)
    if prefix:                    # the prefix layer reads whole padded sequences: make it more than the identity
        rng = np.random.default_rng(0)
        for layer in (tr.heads.prefix.o, tr.heads.prefix.down):
            layer.weight.assign(jt.array(rng.standard_normal(layer.weight.shape).astype("float32") * 0.1))
    short, long_ = sorted(range(len(tr.samples)), key=lambda i: len(tr.samples[i]))[::len(tr.samples) - 1]
    assert len(tr.samples[short]) < len(tr.samples[long_])
    alone = tr.forward([short])
    padded = tr.forward([short, long_])
    n_short = alone[4]
    # sums over the short sample's rows = sums over the batch minus the long sample's
    only_long = tr.forward([long_])
    np.testing.assert_allclose(alone[0].numpy(), padded[0].numpy() - only_long[0].numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(n_short + only_long[4], padded[4])


@pytest.mark.parametrize("family,prefix", [("medusa", False), ("rnn", False), ("moe", False), ("rnn", True)])
def test_a_few_steps_lower_the_loss(tiny_pkl, tmp_path, family, prefix):
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, family, epochs=3, val_ratio=0.0, prefix_layer=prefix))
    before = tr.evaluate_on(tr.train_set)
    tr.fit()
    after = tr.evaluate_on(tr.train_set)
    for k in range(3):
        assert after[f"head{k}_loss"] < before[f"head{k}_loss"], (family, k, before, after)
    records = [json.loads(line) for line in (tr.args.out_dir() / "metrics.jsonl").read_text().splitlines()]
    assert {"head0_top1", "head2_top5", "lr", "loss"} <= set(records[-1])
    assert (tr.args.out_dir() / "best.jtr").is_file()


def saved_as_before_the_rename(run):
    """Rewrite a run folder as a run saved before --base_dtype became --dtype would have it."""
    for name in (run_state.STATE_NAME, "train_args.json"):
        path = run / name
        if name.endswith(".npz"):
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("meta")))
            meta["args"]["base_dtype"] = meta["args"].pop("dtype")
            np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
        else:
            record = json.loads(path.read_text())
            record["base_dtype"] = record.pop("dtype")
            path.write_text(json.dumps(record))


def test_resume_continues_from_same_step_and_optimizer_state(tiny_pkl, tmp_path):
    full = training.Trainer(tiny_args(tiny_pkl, tmp_path, output_dir=str(tmp_path / "full")))
    full.fit()
    training.Trainer(tiny_args(tiny_pkl, tmp_path, output_dir=str(tmp_path / "cut"), max_steps=5)).fit()
    saved_as_before_the_rename(tmp_path / "cut")       # an old run folder (key base_dtype) still resumes
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
    path = tmp_path / "cache"
    cached = hidden_cache.load_or_build(model, samples, path, pad_id=0)
    assert all(isinstance(h, np.memmap) or isinstance(h.base, np.memmap) for h in cached)   # not in RAM
    assert not list(path.glob("*.tmp.*"))
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
    from medusa.runtime.backend import jt

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
def test_every_flag_has_help_and_is_listed_once(family, capsys):
    with pytest.raises(SystemExit):
        train_cmd.parse_args(["--help"], family)
    out = capsys.readouterr().out
    options = out[out.index("options:"):]
    entries = [line.split()[0].rstrip(",") for line in options.splitlines() if line.startswith("  --")]
    assert len(entries) == len(set(entries)) and "--base_dtype" not in out
    text = "".join(out.split())   # argparse wraps lines (and after hyphens)
    for f in dataclasses.fields(train_args.TrainArgs):
        if f.name == "family":
            continue
        listed = f"--{f.name}" in entries
        assert listed == (family == "moe" or f.name not in train_args.MOE_ONLY), f.name
        if listed:
            assert "".join(f.metadata["help"].split()) in text, f.name


def test_base_model_flags_parse_as_in_generate():
    """--base_model_path, --jittor_base_weights, --device and --dtype are the same fields as
    generate's: same defaults, same values, same help."""
    from medusa import cli
    from medusa.app.settings import BaseModelArgs, GenerationSettings, ModelArgs
    from medusa.cli.generate import GenerateArgs

    shared = [f.name for f in dataclasses.fields(BaseModelArgs)]
    assert shared == ["base_model_path", "jittor_base_weights", "device", "dtype"]
    for argv in ([], ["--device", "cpu", "--dtype", "float32", "--base_model_path", train_args.SHIPPED_DATA.as_posix()]):
        margs = cli.parse(argv + ["--prompt", "x"], (ModelArgs, GenerationSettings, GenerateArgs))[0]
        targs = train_cmd.parse_args(argv)
        assert {k: getattr(targs, k) for k in shared} == {k: getattr(margs, k) for k in shared}, argv
    fields = {f.name: f for f in dataclasses.fields(train_args.TrainArgs)}
    assert all(fields[f.name].metadata == f.metadata and fields[f.name].default == f.default
               for f in dataclasses.fields(ModelArgs) if f.name in shared)
    with pytest.raises(SystemExit):       # the same choices
        train_cmd.parse_args(["--dtype", "float64"])


def test_old_base_dtype_warns_and_sets_dtype(capsys):
    args = train_cmd.parse_args(["--base_dtype", "float32"])
    assert args.dtype == "float32" and not hasattr(args, "base_dtype")
    assert "--base_dtype is deprecated, use --dtype" in capsys.readouterr().err
    assert train_cmd.parse_args(["--base_dtype=float16"]).dtype == "float16"
    old = train_cmd.parse_args(["--no-cache_hidden", "--no-share_lm_head", "--no-tf32"])    # argparse's old --no-X
    assert (old.cache_hidden, old.share_lm_head, old.tf32) == (False, False, False)
    assert train_args.saved_args({"base_dtype": "float32", "lr": 0.1}) == {"dtype": "float32", "lr": 0.1}


@pytest.mark.parametrize("argv, fragment", [
    (["--medusa_weights", "heads.jtr"], "--medusa_weights: not a training flag"),
    (["--draft_vocab=none"], "--draft_vocab: not a training flag"),
    (["--moe_top_k", "2"], "--moe_top_k: a flag of the moe family only"),
    (["--temperature", "0.7"], "--temperature: no such flag"),
])
def test_a_flag_training_does_not_have_is_a_one_line_error(argv, fragment, capsys):
    from medusa import cli
    from medusa.app.settings import BaseModelArgs, ModelArgs

    decoding_only = {f.name for f in dataclasses.fields(ModelArgs)} - {f.name for f in dataclasses.fields(BaseModelArgs)}
    assert decoding_only == set(train_cmd.NOT_FOR_TRAINING)       # each gets its own reason
    with pytest.raises(SystemExit) as stop:
        cli.run(lambda a: train_cmd.main(a, family="medusa"), argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


# ---------------------------------------------------------------- recipe: soft loss, presets, early stop, token samples
def test_teacher_positions_point_at_the_state_that_predicts_each_target():
    bi = np.array([0, 0, 1])
    ti = np.array([3, 4, 0])
    valid = np.array([[1, 1, 1], [1, 0, 1]])
    rows, positions, index = losses.teacher_positions(bi, ti, valid)
    for k in range(2):
        for n in range(3):
            if valid[k, n]:   # head k at t predicts t+k+2, which the base predicts from state t+k+1
                assert (rows[index[k, n]], positions[index[k, n]]) == (bi[n], ti[n] + k + 1)
    assert len(rows) == len(set(zip(rows, positions))) == 4     # (0,4) serves head 1 at t=3 and head 0 at t=4... once
    assert index[1, 1] == 0                                     # invalid -> 0


def test_soft_loss_with_a_one_hot_teacher_is_the_hard_loss_and_its_gradient_is_p_minus_q():
    from medusa.runtime.backend import jt

    rng = np.random.default_rng(0)
    K, N, V = 2, 5, 7
    z = rng.normal(size=(K, N, V)).astype(np.float32)
    targets = rng.integers(0, V, (K, N)).astype(np.int32)
    valid = np.ones((K, N), np.int32)
    valid[1, 4] = 0
    logits = jt.array(z)
    one_hot = np.eye(V, dtype=np.float32)[targets]
    nll, _, _, soft = losses.head_losses(logits, targets, valid, jt.array(one_hot))
    np.testing.assert_allclose(soft.numpy(), nll.numpy(), rtol=1e-5)
    q = rng.dirichlet(np.ones(V), (K, N)).astype(np.float32)
    logits = jt.array(z)
    _, _, _, soft = losses.head_losses(logits, targets, valid, jt.array(q))
    grad = jt.grad(soft.sum(), logits).numpy()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(grad, (p - q) * valid[..., None], atol=1e-5)


def test_teacher_probs_are_the_base_models_next_token_distribution(tiny_pkl):
    from medusa.decoding import core
    from medusa.runtime.backend import jt

    model = weights.load_model(tiny_pkl("qwen2"), "float32")
    ids = np.random.default_rng(1).integers(6, 300, (1, 12)).astype(np.int32)
    hidden = core.hidden_states(model, ids)
    ref = jt.nn.softmax(model.logits(hidden).float32(), dim=-1).numpy()[0]     # [T, V]
    mask = np.zeros((1, 12), np.int32)
    mask[0, 4:] = 1
    targets, valid = data.head_targets(ids, mask, 3)
    bi, ti = np.nonzero(valid.any(0))
    probs = losses.teacher_probs(model, [hidden.numpy()[0]], bi, ti, valid[:, bi, ti]).numpy()
    for k in range(3):
        for n in np.flatnonzero(valid[k, bi, ti]):
            np.testing.assert_allclose(probs[k, n], ref[ti[n] + k + 1], atol=1e-5)
            assert probs[k, n].argmax() == ref[ti[n] + k + 1].argmax()


def test_presets_fill_only_the_flags_not_given():
    args = train_cmd.parse_args(["--preset", "seed_fair", "--data_path", train_args.SHIPPED_DATA.as_posix(), "--lr", "3e-4"])
    assert (args.lr, args.batch_size, args.gradient_accumulation_steps, args.warmup_ratio, args.max_grad_norm,
            args.epochs) == (3e-4, 1, 4, 0.015, 0.5, 10)
    args = train_cmd.parse_args(["--preset", "medusa1"])
    assert (args.lr, args.batch_size * args.gradient_accumulation_steps, args.epochs) == (1e-3, 32, 2)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "eagle9"], "--preset 'eagle9': unknown"),
    (["--loss", "kl"], "--loss 'kl': choose one of hard, soft"),
    (["--early_stop", "-1"], "--early_stop must be >= 0"),
    (["--init_heads", "nowhere.jtr"], "heads file nowhere.jtr does not exist"),
])
def test_bad_recipe_flags_are_one_line_errors(argv, message):
    from medusa.runtime.errors import UsageError

    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        train_cmd.parse_args(argv)


def token_file(tiny_pkl, tmp_path, n=24, seed=0):
    """Token samples made as scripts/distill_ids.py makes them: prompt ids + reply ids, 2 replies
    (greedy and sampled) for some prompts."""
    rng = np.random.default_rng(seed)
    samples, groups, temps = [], [], []
    for i in range(n):
        prompt = rng.integers(6, 300, int(rng.integers(3, 8))).tolist()
        for temperature in ((0.0, 0.7) if i % 3 == 0 else (0.0,)):
            reply = rng.choice(np.arange(20, 28), int(rng.integers(6, 14))).tolist()
            samples.append(data.reply_sample(prompt, reply, end_id=2, max_new_tokens=12))
            groups.append(i)
            temps.append(temperature)
    path = tmp_path / "samples.npz"
    data.save_token_samples(path, samples, groups, temps, {"pad_id": 0, "end_id": 2})
    return path, samples


def test_token_samples_round_trip_and_train_split_by_prompt(tiny_pkl, tmp_path):
    path, samples = token_file(tiny_pkl, tmp_path)
    got = data.load_token_samples(path)
    assert len(got.samples) == len(samples) and (got.temperature > 0).sum() == 8
    for a, b in zip(got.samples, samples):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
    cut = data.load_token_samples(path, max_length=5)
    assert max(len(s) for s in cut.samples) <= 5 and all(s.loss_mask.any() for s in cut.samples)
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, data_path=str(path), epochs=1))
    train_prompts = {int(tr.groups[i]) for i in tr.train_set}
    assert train_prompts.isdisjoint(int(tr.groups[i]) for i in tr.val_set) and tr.val_set
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match="not a token-samples file"):
        data.load_token_samples(tmp_path / "junk.npz")


def test_split_from_a_previous_run_keeps_its_val_prompts_out_of_training(tiny_pkl, tmp_path):
    from medusa.runtime.errors import UsageError

    path, samples = token_file(tiny_pkl, tmp_path)
    first = training.Trainer(tiny_args(tiny_pkl, tmp_path, data_path=str(path), output_dir=str(tmp_path / "a"),
                                       epochs=1, max_steps=1))
    first.fit()
    kept = data.read_split(tmp_path / "a" / train_args.SPLIT_NAME)
    assert kept.val == {int(first.groups[i]) for i in first.val_set} and kept.val
    # the data grows by new prompts (ids above every old one), the split seed changes
    got = data.load_token_samples(path)
    new = [int(g) + 1000 for g in got.groups]
    data.save_token_samples(tmp_path / "grown.npz", got.samples * 2, list(got.groups) + new,
                            np.concatenate([got.temperature] * 2), got.meta)
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, data_path=str(tmp_path / "grown.npz"), seed=5,
                                    output_dir=str(tmp_path / "b"), split_from=str(tmp_path / "a")))
    val_prompts = {int(tr.groups[i]) for i in tr.val_set}
    assert val_prompts & set(new) and {g for g in val_prompts if g < 1000} == kept.val
    assert {int(tr.groups[i]) for i in tr.train_set if tr.groups[i] < 1000} == kept.train
    for bad, why in [(tmp_path / "nowhere", "no such file"), (tmp_path / "grown.npz", "not a split file")]:
        with pytest.raises(UsageError, match=why):
            train_args.check_args(tiny_args(tiny_pkl, tmp_path, data_path=str(path), split_from=str(bad)))
    with pytest.raises(UsageError, match="needs token samples"):
        train_args.check_args(tiny_args(tiny_pkl, tmp_path, split_from=str(tmp_path / "a")))


def test_reply_sample_gets_an_end_token_unless_cut():
    s = data.reply_sample([1, 5, 6], [9, 9], end_id=2, max_new_tokens=4)
    assert s.input_ids.tolist() == [1, 5, 6, 9, 9, 2] and s.loss_mask.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.reply_sample([1], [9, 9], end_id=2, max_new_tokens=2).input_ids.tolist() == [1, 9, 9]


@pytest.mark.parametrize("family", ["medusa", "rnn"])
def test_soft_loss_trains_on_token_samples(tiny_pkl, tmp_path, family):
    path, _ = token_file(tiny_pkl, tmp_path)
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, family, data_path=str(path), loss="soft", epochs=3,
                                    val_ratio=0.0))
    before = tr.evaluate_on(tr.train_set)
    tr.fit()
    after = tr.evaluate_on(tr.train_set)
    assert after["loss"] < before["loss"], (before, after)
    recorded = json.loads((tr.args.out_dir() / "train_args.json").read_text())
    assert recorded["sampled_replies"] == 8 and (recorded["mpi"], recorded["nccl"]) == (False, False)


def test_early_stop_ends_the_run_after_evaluations_without_a_new_best(tiny_pkl, tmp_path, monkeypatch):
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, epochs=8, early_stop=2))
    scores = iter([5.0, 4.0, 4.5, 3.9, 4.2, 4.1, 1.0, 1.0])      # best at epochs 2 and 4, then two worse
    real = tr.evaluate
    monkeypatch.setattr(tr, "evaluate", lambda: dict(real(), loss=next(scores)))
    tr.fit()
    records = [json.loads(line) for line in (tr.args.out_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records if r["split"] == "val"] == [5.0, 4.0, 4.5, 3.9, 4.2, 4.1]
    stops = [r for r in records if r["split"] == "early_stop"]
    assert len(stops) == 1 and stops[0]["step"] == tr.step == 6 * tr.steps_per_epoch < tr.stop_at
    assert tr.best == 3.9
    resumed = training.Trainer(tiny_args(tiny_pkl, tmp_path, epochs=8, early_stop=2, resume=True))
    resumed.fit()      # --resume of an early-stopped run stops at once (the count is in the state)
    assert resumed.step == tr.step


def test_init_heads_starts_from_saved_heads_and_may_add_a_prefix_layer(tiny_pkl, tmp_path):
    from medusa.heads.io import save_heads
    from medusa.runtime.errors import UsageError

    first = training.Trainer(tiny_args(tiny_pkl, tmp_path, "rnn", output_dir=str(tmp_path / "a"), epochs=1))
    first.fit()
    saved = save_heads(first.heads, tmp_path / "start.jtr")
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, "rnn", output_dir=str(tmp_path / "b"), init_heads=str(saved),
                                    prefix_layer=True))
    got = dict(tr.heads.named_parameters())
    for name, p in first.heads.named_parameters():
        np.testing.assert_array_equal(got[name].numpy(), p.numpy(), err_msg=name)
    # the prefix layer is new and starts as the identity: the same validation loss as the saved heads
    assert abs(tr.evaluate_on(tr.val_set)["loss"] - first.evaluate_on(first.val_set)["loss"]) < 1e-4
    with pytest.raises(UsageError, match="differ from the ones to train in medusa_num|differ from the ones to train in num_heads"):
        training.Trainer(tiny_args(tiny_pkl, tmp_path, "rnn", output_dir=str(tmp_path / "c"), init_heads=str(saved),
                                   medusa_num_heads=2))


def test_cpu_training_hands_cached_memory_back_when_the_process_doubled(tiny_pkl, tmp_path, monkeypatch):
    """Each batch has its own row count, so Jittor's allocator would keep every batch's block
    sizes (a SmolLM2 run on the CPU was OOM-killed at 24 GB): jt.gc() once the resident size
    has doubled since the last one, after training steps and validation batches."""
    calls, sizes = [], iter([1, 1, 1.5, 2.5, 1, 1.9, 2.1, 1] + [1] * 50)
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, epochs=1, max_steps=3))
    monkeypatch.setattr(training.jt, "gc", lambda: calls.append(1))
    monkeypatch.setattr(training, "_rss_bytes", lambda: next(sizes) * 2 ** 30)
    monkeypatch.setitem(training._after_gc, "rss", None)
    totals = losses.Totals(tr.K)
    for _ in range(5):
        tr.train_step(totals)
    # rss read 1 (first: gc, after 1) | 1.5 | 2.5 (> 2: gc, after 1) | 1.9 | 2.1 (> 2: gc, after 1)
    assert len(calls) == 3
    tr.evaluate_on(tr.val_set)
    assert len(calls) == 3


def test_tf32_only_on_a_gpu_with_cached_states(tiny_pkl, tmp_path, monkeypatch):
    """--tf32 (the default) switches Jittor's tensor-core flag on for the heads' matmuls only on a
    GPU and only once the base states are cached; on the CPU it stays off."""
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, epochs=1, max_steps=1))
    assert tr.args.tf32 and not tr.use_tf32() and jt.flags.use_tensorcore == 0
    monkeypatch.setattr(tr, "hidden", None)
    assert not tr.use_tf32()
    assert train_cmd.parse_args(["--no-tf32", "--data_path", tr.args.data_path]).tf32 is False
