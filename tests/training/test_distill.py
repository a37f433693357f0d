"""Self-distillation: core.greedy_batch (batched greedy) equals one-prompt-at-a-time decoding, and
the script writes resumable ShareGPT records that medusa.data.samples reads back."""
import json

import numpy as np

from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.data.samples import load_samples
from medusa.decoding import core
from medusa.model import weights
from medusa.training import distill


def single_greedy(model, ids, n):
    """Reference: unpadded batch of one (no padding mask at all)."""
    return core.greedy_batch(model, [ids], n, eos_ids=set())[0]


def test_left_pad_positions_start_at_each_first_token():
    tokens, positions, padding = core.left_pad([[7, 8, 9], [5]], pad_id=0)
    assert tokens.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert padding.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_batched_greedy_matches_unbatched(tiny_pkl):
    model = weights.load_model(tiny_pkl("qwen2"), "float32")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(6, 300, n).tolist() for n in (3, 9, 6)]
    batched = core.greedy_batch(model, prompts, 8, eos_ids=set())
    for ids, got in zip(prompts, batched):
        assert got == single_greedy(model, ids, 8)


def test_greedy_stops_at_eos_per_row(tiny_pkl):
    model = weights.load_model(tiny_pkl("llama"), "float32")
    ids = [10, 11, 12, 13]
    free = single_greedy(model, ids, 6)
    stop = free[2]   # pretend the third token is an eos: the row ends before it
    got = core.greedy_batch(model, [ids, [20, 21]], 6, eos_ids={stop})[0]
    assert got == free[:free.index(stop)]


def test_distill_writes_resumable_sharegpt(tiny_pkl, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "category": "math", "prompt": f"what is {i} plus {i}"}) + "\n"
                               for i in range(3)))
    out = tmp_path / "out.jsonl"
    args = distill.DistillArgs(prompts=str(prompts), output=str(out), batch_size=2, limit=2)
    model = ModelArgs(base_model_path=str(tiny_pkl("qwen2")), device="cpu")
    settings = GenerationSettings(max_new_tokens=5)
    assert distill.distill(args, model, settings)["replies"] == 2
    args.limit = 0
    assert distill.distill(args, model, settings)["replies"] == 1          # only the missing id
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [0, 1, 2]
    assert [t["from"] for t in records[0]["conversations"]] == ["human", "gpt"]
    _, report = load_samples(out, weights.load_tokenizer(tiny_pkl("qwen2")), max_length=64)
    assert report.total == 3


def test_sampled_batch_draws_from_the_tempered_softmax(tiny_pkl):
    from medusa.runtime.backend import jt

    model = weights.load_model(tiny_pkl("qwen2"), "float32")
    prompt = [11, 42, 7, 99]
    logits = core.last_logits(model, core.hidden_states(model, np.array([prompt]))).numpy().astype(np.float64)
    T = 0.7
    p = np.exp((logits - logits.max()) / T)
    p /= p.sum()
    jt.set_global_seed(3)
    n = 3000
    first = [r[0] for r in core.greedy_batch(model, [prompt] * n, 1, eos_ids=set(), temperature=T)]
    freq = np.bincount(first, minlength=len(p)) / n
    top = np.argsort(-p)[:5]
    # each of the 5 likeliest tokens within 4 standard errors of its probability
    assert (np.abs(freq[top] - p[top]) <= 4 * np.sqrt(p[top] * (1 - p[top]) / n) + 1e-3).all(), (freq[top], p[top])
    jt.set_global_seed(3)
    again = [r[0] for r in core.greedy_batch(model, [prompt] * 50, 1, eos_ids=set(), temperature=T)]
    jt.set_global_seed(3)
    assert again == [r[0] for r in core.greedy_batch(model, [prompt] * 50, 1, eos_ids=set(), temperature=T)]
    greedy = core.greedy_batch(model, [prompt], 6, eos_ids=set())
    assert core.greedy_batch(model, [prompt], 6, eos_ids=set(), temperature=1e-4) == greedy
