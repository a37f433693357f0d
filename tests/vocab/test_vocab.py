"""Vocabulary reduction (medusa/vocab/reduce.py) on the tiny models: the map round trip, logits of the kept
rows equal the full model's, original ids out of every decoder, lossless Medusa on a reduced base,
a sliced embedding refusing unknown input, heads for the wrong vocabulary refused."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, chat_file

from medusa.cli import vocab as vocab_cmd
from medusa.decoding import core
from medusa.decoding.core import GenerationError
from medusa.heads import draft_vocab
from medusa.heads import io as head_io
from medusa.heads.families import HeadConfig, build_heads
from medusa.model import weights
from medusa.runtime.backend import jt
from medusa.runtime.errors import UsageError
from medusa.vocab import reduce as vocab

PROMPT = [10, 11, 12, 13, 14]


@pytest.fixture(scope="module")
def full(tiny_pkl):
    return weights.load_model(tiny_pkl("qwen2"), "float32")


@pytest.fixture(scope="module")
def reduced(tiny_pkl, full, tmp_path_factory):
    """Two reduced units of the tiny Qwen2 (tied): lm_head only, and embedding too. The kept ids
    are the prompt, the full model's greedy reply and 40 more, so greedy must not change."""
    folder = tmp_path_factory.mktemp("vocab")
    reply = core.generate(full, PROMPT, 24).output_ids
    kept = sorted(set(PROMPT) | set(reply) | set(range(40, 80)) | {2, 3, 5})
    (folder / vocab.VOCAB_FILE).write_text(json.dumps({"kept_ids": kept, "original_vocab_size": 320}))
    out = {}
    for sliced in (False, True):
        path = folder / ("emb" if sliced else "head") / "model.pkl"
        out[sliced] = vocab.slice_model(tiny_pkl("qwen2"), folder, path, slice_embedding=sliced)
    return kept, reply, out


def test_build_keeps_specials_template_and_reaches_the_coverage(tiny_pkl, tmp_path):
    tok = weights.load_tokenizer(tiny_pkl("qwen2"))
    data = chat_file(tmp_path / "chat.jsonl")
    v = vocab.build([data], tok, eos_ids=[5], vocab_size=320, coverage=0.95)
    assert set(tok.all_special_ids) | {5} <= set(v["kept_ids"])
    assert v["kept_ids"] == sorted(v["kept_ids"]) and v["size"] == len(v["kept_ids"]) < 320
    assert v["coverage"][str(data)]["all_tokens"] >= 0.95
    assert all(v["orig2reduced"][str(t)] == i for i, t in enumerate(v["kept_ids"]))   # the map round trips
    exact = vocab.build([data], tok, eos_ids=[5], vocab_size=320, size=v["always_kept"] + 3)
    assert exact["size"] == v["always_kept"] + 3


def test_kept_rows_give_the_full_models_logits(full, reduced):
    kept, _, units = reduced
    want = core.forced_logits(full, PROMPT, [40, 41, 42])[:, kept]
    for path in units.values():
        small = weights.load_model(path, "float32")
        assert small.config.output_size == len(kept) and small.vocab.reduced
        np.testing.assert_allclose(core.forced_logits(small, PROMPT, [40, 41, 42]), want, rtol=1e-5, atol=1e-5)


def test_decoders_hand_out_original_ids(full, reduced):
    from medusa.decoding.loop import medusa_generate

    kept, reply, units = reduced
    for path in units.values():
        small = weights.load_model(path, "float32")
        assert core.generate(small, PROMPT, 24).output_ids == reply
        assert core.greedy_batch(small, [PROMPT], 24, set())[0] == reply
        heads = build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=len(kept),
                                       vocab=small.config.vocab_id, share_lm_head=True))
        heads.init_from_base(small.lm_head_t())
        assert medusa_generate(small, heads, PROMPT, 24, "8_node").output_ids == reply    # lossless


def test_a_sliced_embedding_refuses_unknown_input(reduced):
    kept, _, units = reduced
    small = weights.load_model(units[True], "float32")
    outside = next(t for t in range(320) if t not in kept)
    with pytest.raises(GenerationError, match=f"token {outside} is outside the reduced vocabulary"):
        core.generate(small, PROMPT + [outside], 4)
    core.generate(weights.load_model(units[False], "float32"), PROMPT + [outside], 4)   # whole embedding: fine
    out = subprocess.run([sys.executable, "-m", "medusa", "generate", "--jittor_base_weights", str(units[True]),
                          "--prompt", "zebra quantum"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 2 and "outside this model's reduced vocabulary" in out.stderr, out.stderr[-2000:]


def test_heads_for_the_wrong_vocabulary_are_refused(full, reduced, tmp_path):
    kept, _, units = reduced
    small = weights.load_model(units[False], "float32")
    full_heads = build_heads(HeadConfig(num_heads=3, hidden_size=64, vocab_size=320))
    small_heads = build_heads(HeadConfig(num_heads=3, hidden_size=64, vocab_size=len(kept), vocab=small.config.vocab_id))
    other = build_heads(HeadConfig(num_heads=3, hidden_size=64, vocab_size=len(kept), vocab="0123456789ab"))
    with pytest.raises(UsageError, match="vocabulary 320"):
        head_io.check_fits(full_heads.config, small.config, "full.jtr")
    with pytest.raises(UsageError, match=f"vocabulary {len(kept)}, the base model has 64 and 320"):
        head_io.check_fits(small_heads.config, full.config, "small.jtr")
    with pytest.raises(UsageError, match="reduced vocabulary 0123456789ab"):
        head_io.check_fits(other.config, small.config, "other.jtr")
    head_io.check_fits(small_heads.config, small.config, "small.jtr")


def test_training_on_a_reduced_base_maps_and_masks_labels(tiny_pkl, reduced, tmp_path):
    from support import tiny_args

    from medusa.training import trainer as training

    kept, _, units = reduced
    args = tiny_args(tiny_pkl, tmp_path, jittor_base_weights=str(units[False]), epochs=1, cache_hidden=False)
    tr = training.Trainer(args)
    assert tr.heads.config.vocab_size == len(kept) and tr.heads.config.vocab == tr.model.config.vocab_id
    outside = tr.targets_outside_vocab()
    assert outside > 0                                    # the chat words are not all kept
    tr.fit()
    saved = head_io.read_config(Path(args.output_dir) / "best.jtr")
    assert saved.vocab == tr.model.config.vocab_id
    saved_args = json.loads((Path(args.output_dir) / "train_args.json").read_text())
    assert saved_args["targets_outside_vocab"] == outside


def test_vocab_bench_compares_full_and_reduced(tiny_pkl, narrow, tmp_path):
    from medusa.vocab import bench as vocab_bench

    kept, _, _, units = narrow
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "category": "c", "prompt": p}) + "\n"
                               for i, p in enumerate(["hello there", "the cat sat on the mat"])))
    small = weights.load_model(units["tied"], "float32")
    heads = build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=len(kept), vocab=small.config.vocab_id,
                                   share_lm_head=True))
    heads.init_from_base(small.lm_head_t())
    head_io.save_heads(heads, tmp_path / "heads.jtr")
    out = tmp_path / "vb.json"
    args = vocab_bench.VocabBenchArgs(full=str(tiny_pkl("qwen2")), reduced=str(units["tied"]), data=str(prompts),
                                      output=str(out), medusa_weights=str(tmp_path / "heads.jtr"), num_samples=2,
                                      max_new_tokens=24, warmup_tokens=2, medusa_choices="chain", vocab_check=8)
    summary = vocab_bench.run(args)["summary"]
    saved = json.loads(out.read_text())
    assert saved["summary"] == summary and len(saved["samples"]) == 2 and out.with_suffix(".png").is_file()
    assert summary["bytes_per_step"]["reduced"] < summary["bytes_per_step"]["full"]
    assert set(vocab_bench.SIDES) <= set(saved["samples"][0])
    for s in saved["samples"]:
        for side in list(vocab_bench.SIDES)[1:]:
            same = s[side]["output_ids"] == s["full"]["output_ids"]
            assert (s[side]["first_divergence"] is None) == same
            if vocab_bench.SIDES[side][2]:
                assert same, side                         # the checked sides are the full model's output
    assert summary["reduced_checked_identical_share"] == summary["reduced_medusa_identical_share"] == 1.0
    for s in saved["samples"]:                            # dropped steps count, with 0 tokens
        assert sum(s["reduced_medusa"]["accept_lengths"]) == len(s["reduced_medusa"]["output_ids"]) - 1
    assert vocab_bench.first_difference([1, 2, 3], [1, 5, 3]) == 1 and vocab_bench.first_difference([1], [1]) is None
    with pytest.raises(UsageError, match="exists"):
        vocab_bench.VocabBenchArgs(full=args.full, reduced=args.reduced, data=args.data, output=str(out))
    untied = vocab_bench.VocabBenchArgs(full=str(tiny_pkl("llama")), reduced=str(units["untied"]), data=str(prompts),
                                        output=str(tmp_path / "u.json"), num_samples=1, max_new_tokens=4,
                                        warmup_tokens=1)
    assert set(vocab_bench.run(untied)["samples"][0]) & set(vocab_bench.SIDES) == {"full", "reduced"}


@pytest.fixture(scope="module")
def narrow(tiny_pkl, full, tmp_path_factory):
    """Reduced tiny models whose own argmax leaves the full model's greedy reply: the tied Qwen2
    without the reply's later tokens ("tied"), without any of its tokens ("tied_none"), with a
    sliced embedding ("tied_emb"), and the untied Llama ("untied")."""
    reply = core.generate(full, PROMPT, 40).output_ids
    missing = set(reply[6:]) - set(reply[:6])
    base = set(PROMPT) | set(range(40, 80)) | {2, 3, 5}
    vocabs = {"late": sorted((base | set(reply)) - missing), "none": sorted(base - set(reply))}
    folder = tmp_path_factory.mktemp("narrow")
    units = {}
    for name, family, which, sliced in (("tied", "qwen2", "late", False), ("tied_none", "qwen2", "none", False),
                                        ("tied_emb", "qwen2", "late", True), ("untied", "llama", "late", False)):
        (folder / which).mkdir(exist_ok=True)
        (folder / which / vocab.VOCAB_FILE).write_text(json.dumps({"kept_ids": vocabs[which],
                                                                    "original_vocab_size": 320}))
        units[name] = vocab.slice_model(tiny_pkl(family), folder / which, folder / name / "model.pkl",
                                        slice_embedding=sliced)
    return vocabs["late"], reply, missing, units


def test_the_vocab_check_hands_out_the_full_models_greedy_tokens(narrow):
    from medusa.decoding.loop import medusa_generate
    from medusa.decoding.sampling import Sampling

    kept, reply, missing, units = narrow
    assert missing                                            # the tiny model's reply leaves the vocabulary
    for name in ("tied", "tied_none"):
        small = weights.load_model(units[name], "float32")
        assert small.has_full_head
        unchecked = core.generate(small, PROMPT, 40, sampling=Sampling(vocab_check=0)).output_ids
        assert unchecked != reply and set(unchecked) <= set(small.config.kept_ids)
        heads = build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=small.config.output_size,
                                       vocab=small.config.vocab_id, share_lm_head=True))
        heads.init_from_base(small.lm_head_t())
        for every in (1, 3, 32):
            check = Sampling(vocab_check=every)
            assert core.generate(small, PROMPT, 40, sampling=check).output_ids == reply
            for tree in ("chain", "8_node"):
                out = medusa_generate(small, heads, PROMPT, 40, tree, sampling=check)
                assert out.output_ids == reply, (name, every, tree)
                assert sum(out.accept_lengths) == len(reply) - 1       # a dropped step counts with 0 tokens
                if name == "tied_none" and every == 32:
                    assert 0 in out.accept_lengths                     # steps after a wrong token were dropped
    small = weights.load_model(units["tied"], "float32")
    heads = build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=len(kept), vocab=small.config.vocab_id,
                                   share_lm_head=True))
    heads.init_from_base(small.lm_head_t())
    late = next(t for t in reply[6:] if t in missing)        # an EOS the reduced head cannot pick
    want = reply[:reply.index(late) + 1]
    assert core.generate(small, PROMPT, 40, {late}, Sampling(vocab_check=5)).output_ids == want
    assert medusa_generate(small, heads, PROMPT, 40, "8_node", {late}, Sampling(vocab_check=5)).output_ids == want


def test_check_interval_drops_to_one_after_a_wrong_token_and_doubles_back():
    interval = core.CheckInterval(32)
    seen = [interval.now]
    for wrong in (False, True, False, False, True, False, False, False, False, False, False):
        interval.update(wrong)
        seen.append(interval.now)
    assert seen == [32, 32, 1, 2, 4, 1, 2, 4, 8, 16, 32, 32]


def test_no_vocab_check_without_the_full_head(narrow):
    from medusa.decoding.sampling import Sampling

    _, _, _, units = narrow
    for name in ("tied_emb", "untied"):                       # no full lm_head rows left in the unit
        small = weights.load_model(units[name], "float32")
        assert not small.has_full_head and Sampling().check_every(small) == 0
    small = weights.load_model(units["tied"], "float32")
    assert Sampling().check_every(small) == 32 and Sampling(temperature=0.7).check_every(small) == 0


def test_prefix_layer_heads_refuse_the_vocab_check(narrow):
    """The check rewinds the base cache after a wrong token; a prefix layer's own cache would go
    stale, so the combination is refused up front."""
    from medusa.decoding.loop import medusa_generate
    from medusa.decoding.sampling import Sampling

    _, _, _, units = narrow
    small = weights.load_model(units["tied"], "float32")
    heads = build_heads(HeadConfig(family="rnn", num_heads=4, hidden_size=64, vocab_size=small.config.output_size,
                                   vocab=small.config.vocab_id, share_lm_head=True, prefix_layer=True))
    with pytest.raises(UsageError, match="prefix layer cannot run with the vocabulary check"):
        medusa_generate(small, heads, PROMPT, 8, "chain", sampling=Sampling(vocab_check=4))


# ---------------------------------------------------------------- draft vocabulary (heads only)
def draft_file(tmp_path, ids, name="draft.json"):
    path = tmp_path / name
    path.write_text(json.dumps({draft_vocab.DRAFT_KEY: [int(i) for i in ids]}))
    return path


@pytest.mark.parametrize("family,prefix", [("medusa", False), ("rnn", False), ("rnn", True), ("moe", False)])
def test_a_draft_vocabulary_is_lossless_and_drafts_only_its_tokens(full, tmp_path, monkeypatch, family, prefix):
    """Greedy Medusa with a draft vocabulary hands out plain greedy's tokens (the base model
    verifies), and every drafted token (tree nodes past the root) is in the set, whether the
    set holds the reply's tokens or not."""
    from medusa.decoding import steps as decoding
    from medusa.decoding.loop import medusa_generate

    jt.set_global_seed(0)
    heads = build_heads(HeadConfig(family=family, num_heads=4, hidden_size=64, vocab_size=320,
                                   share_lm_head=True, prefix_layer=prefix))
    reply = core.generate(full, PROMPT, 24).output_ids
    drafted, real = [], decoding.propose
    monkeypatch.setattr(decoding, "propose", lambda *a: drafted.append(real(*a)) or drafted[-1])
    for ids in (sorted(set(reply) | set(range(100, 140))), range(200, 232)):   # the reply's tokens, or none
        draft = draft_vocab.DraftVocab(list(ids))
        heads.propose_from(draft)
        drafted.clear()
        out = medusa_generate(full, heads, PROMPT, 24, "8_node")
        assert out.output_ids == reply
        assert drafted and all(set(t[1:].tolist()) <= set(draft.token_ids.tolist()) for t in drafted)
    heads.propose_from(None)
    assert medusa_generate(full, heads, PROMPT, 24, "8_node").output_ids == reply


def test_the_projection_reads_only_the_draft_columns(full):
    draft = draft_vocab.DraftVocab([7, 3, 3, 250])
    weight, rows = draft.projection(full)
    assert draft.token_ids.tolist() == rows.tolist() == [3, 7, 250]
    np.testing.assert_array_equal(weight.numpy(), full.lm_head_t().numpy()[:, [3, 7, 250]])
    assert draft.projection(full)[0] is weight                     # made once per model


def test_a_reduced_base_maps_draft_tokens_to_its_rows(reduced):
    kept, reply, units = reduced
    small = weights.load_model(units[False], "float32")
    weight, rows = draft_vocab.DraftVocab(kept[5:15]).projection(small)
    assert small.vocab.tokens(rows).tolist() == kept[5:15]
    with pytest.raises(UsageError, match="outside the model's reduced vocabulary"):
        draft_vocab.DraftVocab([kept[0], next(t for t in range(320) if t not in kept)]).projection(small)


def test_bad_draft_vocabularies_are_refused_before_the_model_loads(tiny_pkl, tmp_path, monkeypatch):
    from medusa.app import loading
    from medusa.app.settings import GenerationSettings, ModelArgs

    pkl = tiny_pkl("qwen2")
    shared = head_io.save_heads(build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=320,
                                                       share_lm_head=True)), tmp_path / "shared.jtr")
    own = head_io.save_heads(build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=320)), tmp_path / "own.jtr")
    monkeypatch.setattr(weights, "load_model", lambda *a, **k: pytest.fail("the model loaded"))

    def plan(heads, draft):
        margs = ModelArgs(jittor_base_weights=str(pkl), medusa_weights=str(heads) if heads else "",
                          draft_vocab=str(draft), device="cpu")
        return loading.plan(margs, GenerationSettings(medusa_choices="chain"))

    assert len(plan(shared, draft_file(tmp_path, range(50))).draft_vocab) == 50
    assert plan(shared, "auto").draft_vocab is None                    # no draft_vocab.json beside the heads
    draft_file(tmp_path, range(60), draft_vocab.DRAFT_FILE)
    assert len(plan(shared, "auto").draft_vocab) == 60 and plan(shared, "none").draft_vocab is None
    assert plan(own, "auto").draft_vocab is None and plan(None, "auto").draft_vocab is None
    assert plan(shared, "auto").resolved()["draft_vocab_size"] == 60
    cases = [(shared, draft_file(tmp_path, [1, 320], "big.json"), "token id 320 is outside the model's vocabulary of 320"),
             (own, draft_file(tmp_path, range(50)), "needs heads that share the base lm_head"),
             (None, draft_file(tmp_path, range(50)), "only heads draft"),
             (shared, draft_file(tmp_path, [], "empty.json"), "non-empty list of token ids"),
             (shared, tmp_path / "missing.json", "no such file")]
    (tmp_path / "bad.json").write_text('{"token_ids": [1, "a"]}')
    cases.append((shared, tmp_path / "bad.json", "integers only"))
    (tmp_path / "list.json").write_text("[1, 2]")
    cases.append((shared, tmp_path / "list.json", "needs an object"))
    for heads, draft, message in cases:
        with pytest.raises(UsageError, match=message):
            plan(heads, draft)


def test_draft_command_keeps_the_most_frequent_reply_tokens(tmp_path):
    from medusa.data.samples import Sample, save_token_samples

    ids = np.array([1, 2, 9, 9, 9, 8, 8, 7], np.int32)
    mask = np.array([0, 0, 1, 1, 1, 1, 1, 1], np.int32)                  # the prompt's 1, 2 do not count
    data = tmp_path / "s.npz"
    save_token_samples(data, [Sample(ids, mask)], [0], [0.0], {})
    out = tmp_path / "draft.json"
    vocab_cmd.main(["draft", "--data", str(data), "--size", "2", "--output", str(out)])
    written = json.loads(out.read_text())
    assert written["token_ids"] == [8, 9] and written["coverage"] == pytest.approx(5 / 6)
    assert draft_vocab.DraftVocab.load(out).token_ids.tolist() == [8, 9]
    with pytest.raises(UsageError, match="exists"):
        vocab_cmd.main(["draft", "--data", str(data), "--output", str(out)])
