"""Vocabulary reduction (medusa/vocab.py) on the tiny models: the map round trip, logits of the kept
rows equal the full model's, original ids out of every decoder, lossless Medusa on a reduced base,
a sliced embedding refusing unknown input, heads for the wrong vocabulary refused."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medusa import core, head_io, vocab, weights
from medusa.core import GenerationError
from medusa.errors import UsageError
from medusa.heads import HeadConfig, build_heads
from test_training import chat_file

ROOT = Path(__file__).parent.parent
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
    from medusa.decoding import medusa_generate

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
    out = subprocess.run([sys.executable, "-m", "medusa.generate", "--jittor_base_weights", str(units[True]),
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
    from medusa import training
    from test_training import tiny_args

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


def test_vocab_bench_compares_full_and_reduced(tiny_pkl, reduced, tmp_path):
    from medusa import vocab_bench

    kept, _, units = reduced
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "category": "c", "prompt": p}) + "\n"
                               for i, p in enumerate(["hello there", "the cat sat on the mat"])))
    out = tmp_path / "vb.json"
    args = vocab_bench.VocabBenchArgs(full=str(tiny_pkl("qwen2")), reduced=str(units[False]), data=str(prompts),
                                      output=str(out), num_samples=2, max_new_tokens=8, warmup_tokens=2)
    summary = vocab_bench.run(args)["summary"]
    saved = json.loads(out.read_text())
    assert saved["summary"] == summary and len(saved["samples"]) == 2 and out.with_suffix(".png").is_file()
    assert summary["bytes_per_step"]["reduced"] < summary["bytes_per_step"]["full"]
    for s in saved["samples"]:
        assert s["reduced_identical"] == (s["reduced"]["output_ids"] == s["full"]["output_ids"])
    assert vocab_bench.first_difference([1, 2, 3], [1, 5, 3]) == 1 and vocab_bench.first_difference([1], [1]) is None
    with pytest.raises(UsageError, match="exists"):
        vocab_bench.VocabBenchArgs(full=args.full, reduced=args.reduced, data=args.data, output=str(out))
