"""Tree tuning: head ranks against the base logits, greedy growth, the CLI's tree file."""
import json

import numpy as np
import pytest

from medusa.bench import tune
from medusa.decoding.tree import load_choices, validate_choices


def test_grow_tree_order_and_values():
    acc = np.array([[0.5, 0.3], [0.4, 0.1]])
    paths, values = tune.grow_tree(acc, max_nodes=10)
    assert paths == [[0], [1], [0, 0], [1, 0], [0, 1], [1, 1]]
    assert values == pytest.approx([0.5, 0.3, 0.2, 0.12, 0.05, 0.03])
    assert tune.expected_accept(paths[:3], acc) == pytest.approx(1 + 0.5 + 0.3 + 0.2)


def test_every_prefix_of_the_growth_is_a_tree():
    acc = np.random.default_rng(0).dirichlet(np.ones(6), size=4) * 0.9   # [K=4, ranks=6]
    paths, values = tune.grow_tree(acc, max_nodes=40)
    assert len(paths) == 40 and all(a >= b for a, b in zip(values, values[1:]))
    for n in range(1, 41):
        validate_choices(paths[:n], num_heads=4)


def test_growth_stops_at_zero_value():
    acc = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert tune.grow_tree(acc, 10)[0] == [[0]]


def test_accuracy_table_counts_exact_ranks():
    ranks = [np.array([[0, 0, 1, 5, -1]]), np.array([[0, 2]])]   # one head, two prompts
    acc = tune.accuracy_table(ranks, max_rank=3)
    assert acc[0] == pytest.approx([3 / 6, 1 / 6, 1 / 6])         # rank 5 is beyond max_rank


@pytest.fixture(scope="module")
def tiny_setup(tiny_pkl):
    from medusa.app import loading
    from medusa.app.settings import ModelArgs
    from medusa.heads.families import HeadConfig, build_heads
    from medusa.runtime.backend import jt

    setup = loading.load(loading.plan(ModelArgs(jittor_base_weights=str(tiny_pkl("qwen2"))), heads="none"))
    cfg = setup.model.config
    jt.set_global_seed(0)
    setup.heads = build_heads(HeadConfig(family="medusa", num_heads=3, num_layers=1, hidden_size=cfg.hidden_size,
                                         vocab_size=cfg.vocab_size, share_lm_head=True))
    return setup


def test_head_ranks_match_base_logits(tiny_setup):
    """Zero-initialised ResBlocks with the shared lm_head predict like the base model, so head k's
    rank of token t+k+2 is that token's rank in the base logits at t."""
    from medusa.model.transformer import build_mask
    from medusa.runtime.backend import jt

    model, heads = tiny_setup.model, tiny_setup.heads
    ids = list(np.random.default_rng(1).integers(0, model.config.vocab_size, 20))
    start = 12
    ranks = tune.head_ranks(model, heads, ids, start)
    T = len(ids)
    hidden = model(jt.array(np.array([ids], np.int32)), jt.array(np.arange(T, dtype=np.int32)[None]), build_mask(1, T))
    logits = model.logits(hidden).numpy()[0]
    for k in range(3):
        for j, t in enumerate(range(start - 1, T - 1)):
            if t + k + 2 < T:
                assert ranks[k, j] == (logits[t] > logits[t, ids[t + k + 2]]).sum()
            else:
                assert ranks[k, j] == -1


def test_tune_writes_a_loadable_tree(tiny_setup, tmp_path):
    from medusa.app.settings import GenerationSettings

    args = tune.TuneArgs(num_prompts=2, sizes="1,3,6", repeats=1, verify_prompts=1)
    report = tune.tune(args, GenerationSettings(max_new_tokens=12), tiny_setup, log=lambda *_: None)
    path, report_path = tune.write_tree(report, tmp_path / "tuned.json")
    tree = load_choices(str(path), num_heads=3)
    assert tree == report["tree"] and len(tree) == report["chosen"]["nodes"] in (1, 3, 6)
    saved = json.loads(report_path.read_text())
    assert saved["chosen"]["measured_accept"] >= 1.0
    sizes = [c["nodes"] for c in saved["candidates"]]   # sizes beyond the nodes ever accepted are dropped
    assert sizes[0] == 1 and sizes == sorted(sizes) and set(sizes) <= {1, 3, 6}
