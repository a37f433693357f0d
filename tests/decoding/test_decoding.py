"""Medusa tree decoding: greedy Medusa == plain greedy for every head family and tree, oracle
heads (long accepted paths, KV compaction, non-zero branches), typical and sampled acceptance,
EOS and max_new_tokens stops."""
import numpy as np
import pytest
from support import FixedScores, OracleHeads, random_heads

import medusa.runtime.options as options
from medusa.decoding import steps
from medusa.decoding.acceptance import speculative_walk
from medusa.decoding.core import generate
from medusa.decoding.device_loop import device_loop_ok
from medusa.decoding.loop import STAT_NAMES, medusa_generate, medusa_stream
from medusa.decoding.sampling import Sampling
from medusa.decoding.tree_vars import resolve_tree
from medusa.heads.families import HeadConfig, build_heads
from medusa.model import weights
from medusa.runtime.backend import jt
from medusa.runtime.errors import UsageError

N_NEW = 24
K = 4
PRESETS = ("chain", "8_node", "8_node_2", "16_node", "mc_sim_7b_63")


@pytest.fixture(scope="module")
def models(tiny_pkl):
    loaded = {}

    def get(family):
        if family not in loaded:
            loaded[family] = weights.load_model(tiny_pkl(family), "float32")
        return loaded[family]
    return get


def prompt(seed=0, n=8):
    return [int(t) for t in np.random.default_rng(seed).integers(6, 320, n)]


_plain = {}


def plain_greedy(model, family, ids, n=N_NEW):
    key = (family, tuple(ids), n)
    if key not in _plain:
        _plain[key] = generate(model, ids, n).output_ids
    return _plain[key]


# ---------------------------------------------------------------- greedy == plain greedy
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("head_family", ["medusa", "rnn", "moe"])
def test_greedy_matches_plain_every_head_family_and_tree(models, head_family, preset):
    model = models("qwen2")
    heads = random_heads(model, head_family, share=(preset == "16_node"))
    out = medusa_generate(model, heads, prompt(1), N_NEW, preset)
    assert out.output_ids == plain_greedy(model, "qwen2", prompt(1))
    assert all(a >= 1 for a in out.accept_lengths) and sum(out.accept_lengths) + 1 == N_NEW
    assert set(out.times) == set(STAT_NAMES)


@pytest.mark.parametrize("model_family", ["llama", "qwen3"])
@pytest.mark.parametrize("head_family,preset", [("medusa", "mc_sim_7b_63"), ("rnn", "8_node"), ("moe", "16_node")])
def test_greedy_matches_plain_every_model_family(models, model_family, head_family, preset):
    model = models(model_family)
    out = medusa_generate(model, random_heads(model, head_family), prompt(2), N_NEW, preset)
    assert out.output_ids == plain_greedy(model, model_family, prompt(2))


@pytest.mark.parametrize("leaves", [False, True])
@pytest.mark.parametrize("sampling", [Sampling(), Sampling("typical", temperature=0.7, root="sample"),
                                      Sampling("sample", temperature=0.9)])
def test_scoring_leaves_or_not_gives_the_same_tokens(models, monkeypatch, leaves, sampling):
    """CPU scores only nodes with children (leaf rows on demand), GPU scores all: same result."""
    model = models("qwen2")
    heads = random_heads(model, "medusa")
    ref = medusa_generate(model, heads, prompt(7), 16, "16_node", sampling=sampling).output_ids
    monkeypatch.setattr(steps, "score_leaves", lambda: leaves)
    assert medusa_generate(model, heads, prompt(7), 16, "16_node", sampling=sampling).output_ids == ref


# ---------------------------------------------------------------- oracle heads
@pytest.mark.parametrize("sequential", [False, True])
def test_oracle_heads_accept_full_depth(models, sequential):
    model = models("llama")
    ids = prompt(3)
    ref = plain_greedy(model, "llama", ids, 40)
    heads = OracleHeads(model, ids + ref, sequential=sequential)
    out = medusa_generate(model, heads, ids, 31, "8_node")
    assert out.output_ids == ref[:31]
    assert out.accept_lengths == [5] * 6      # every step: 4 drafted + 1 bonus (depth + 1)


@pytest.mark.parametrize("sequential", [False, True])
def test_oracle_heads_right_at_top2_take_the_branches(models, sequential):
    model = models("llama")
    ids = prompt(4)
    ref = plain_greedy(model, "llama", ids, 40)
    heads = OracleHeads(model, ids + ref, rank=1, sequential=sequential)
    branch = [[1], [1, 1], [1, 1, 1], [0], [0, 0]]    # only rank-1 branches reach depth 3
    out = medusa_generate(model, heads, ids, 29, branch)
    assert out.output_ids == ref[:29]
    assert out.accept_lengths == [4] * 7
    # 8_node reaches rank 1 at depth 1 only: [1] accepted, then its child [1, 0] (rank 0) fails
    out = medusa_generate(model, heads, ids, 25, "8_node")
    assert out.output_ids == ref[:25] and out.accept_lengths == [2] * 12


def test_eos_and_max_new_tokens_stop_exactly(models):
    model = models("llama")
    ids = prompt(3)
    ref = plain_greedy(model, "llama", ids, 40)
    heads = OracleHeads(model, ids + ref)
    for n in (1, 2, 7, 13):
        out = medusa_generate(model, heads, ids, n, "8_node")
        assert out.output_ids == ref[:n] and sum(out.accept_lengths) + 1 == n
    j = next(i for i in range(3, 40) if ref[i] not in ref[:i])      # first occurrence mid-step
    out = medusa_generate(model, heads, ids, 40, "8_node", eos_ids=(ref[j],))
    assert out.output_ids == ref[:j + 1]
    first = medusa_generate(model, heads, ids, 40, "8_node", eos_ids=(ref[0],))
    assert first.output_ids == ref[:1] and first.steps == 0


def test_stream_yields_prefill_then_steps(models):
    model = models("llama")
    ids = prompt(3)
    ref = plain_greedy(model, "llama", ids, 40)
    chunks = list(medusa_stream(model, OracleHeads(model, ids + ref), ids, 11, "8_node"))
    assert [len(c) for c, _ in chunks] == [1, 5, 5]
    assert set(chunks[0][1]) == {"init"} and set(chunks[1][1]) == {"tree", "posterior", "update", "medusa"}


# ---------------------------------------------------------------- typical and sampled acceptance
def test_typical_with_zero_threshold_accepts_every_full_path(models):
    model = models("qwen2")
    heads = random_heads(model, "medusa")
    s = Sampling("typical", temperature=0.7, posterior_threshold=0.0, posterior_alpha=0.0)
    for preset in ("8_node", "mc_sim_7b_63"):
        out = medusa_generate(model, heads, prompt(5), 21, preset, sampling=s)
        assert out.accept_lengths == [5] * 4


def test_typical_with_threshold_one_rejects_every_draft(models):
    model = models("qwen2")
    heads = random_heads(model, "medusa")
    s = Sampling("typical", temperature=0.7, posterior_threshold=1.0, posterior_alpha=1e9)
    out = medusa_generate(model, heads, prompt(5), 12, "8_node", sampling=s)
    assert out.accept_lengths == [1] * 11       # p(x) > min(1, 1e9 exp(-H)) = 1 never holds


@pytest.mark.parametrize("sampling", [Sampling("sample", temperature=0.8, top_p=0.9, seed=3),
                                      Sampling("typical", temperature=0.8, root="sample", seed=3)])
def test_sampling_runs_and_is_reproducible(models, sampling):
    model = models("qwen3")
    heads = random_heads(model, "rnn")
    a = medusa_generate(model, heads, prompt(6), 16, "8_node", sampling=sampling)
    b = medusa_generate(model, heads, prompt(6), 16, "8_node", sampling=sampling)
    assert a.output_ids == b.output_ids and len(a.output_ids) == 16
    other = Sampling(**{**sampling.__dict__, "seed": 4})
    c = medusa_generate(model, heads, prompt(6), 16, "8_node", sampling=other)
    assert c.output_ids != a.output_ids


def test_speculative_walk_keeps_the_base_distribution():
    """The first emitted token of the tree walk is distributed as p, whatever the drafts."""
    tree = resolve_tree([[0], [1], [2], [0, 0]], 2)
    rng = np.random.default_rng(0)
    V = 6
    rows = np.log(rng.dirichlet(np.ones(V), size=tree.num_nodes))
    tokens = np.array([0, 2, 0, 5, 1])             # drafts: node 1..3 = tokens 2, 0, 5
    s = Sampling("sample", temperature=1.0)
    counts = np.zeros(V)
    for _ in range(10000):
        path, bonus = speculative_walk(tree.buffers, tokens, FixedScores(rows), s, rng)
        counts[tokens[path[1]] if len(path) > 1 else bonus] += 1
    p = np.exp(rows[0]) / np.exp(rows[0]).sum()
    assert np.abs(counts / counts.sum() - p).max() < 0.02


def test_topk_indices_matches_sorting():
    x = np.random.default_rng(0).standard_normal((3, 2, 50)).astype(np.float32)
    got = steps.topk_indices(jt.array(x), 4).numpy()
    np.testing.assert_array_equal(got, np.argsort(-x, axis=-1)[..., :4])


def test_padded_paths_and_bad_inputs():
    tree = resolve_tree("8_node", K)
    assert tree is resolve_tree("8_node", K)                         # cached per spec
    assert (tree.buffers.retrieve_indices == -1).any()
    with pytest.raises(ValueError, match="mode"):
        Sampling("beam")
    with pytest.raises(ValueError, match="exceeds the number of Medusa heads"):
        resolve_tree("mc_sim_7b_63", 2)


# ---------------------------------------------------------------- the device loop (one fetch a step)
@pytest.fixture
def device_loop():
    """Run decoding's device loop here on the CPU (it is the GPU's greedy loop)."""
    with options.override(device_loop="on"):
        yield


def device_equals_host(model, heads, preset, monkeypatch):
    """The device loop (asked for here on the CPU) gives the host loop's tokens (plain greedy's)
    and accept lengths. Returns its result."""
    host = medusa_generate(model, heads, prompt(1), N_NEW, preset)
    with options.override(device_loop="on"):
        assert device_loop_ok(model, heads, Sampling(), None)
        device = medusa_generate(model, heads, prompt(1), N_NEW, preset)
    assert device.output_ids == host.output_ids == plain_greedy(model, "qwen2", prompt(1))
    assert device.accept_lengths == host.accept_lengths
    return device


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("head_family", ["medusa", "moe", "rnn"])
def test_device_loop_equals_the_host_loop(models, monkeypatch, head_family, preset):
    model = models("qwen2")
    device_equals_host(model, random_heads(model, head_family, share=(preset == "16_node")), preset, monkeypatch)


def test_device_loop_takes_full_paths_branches_and_stops(models, device_loop):
    """Oracle heads: every step accepts depth + 1; right at rank 1 the loop takes the branch; an
    EOS mid-step and max_new_tokens end exactly."""
    model = models("llama")
    ids = prompt(3)
    ref = plain_greedy(model, "llama", ids, 40)
    out = medusa_generate(model, OracleHeads(model, ids + ref), ids, 31, "8_node")
    assert out.output_ids == ref[:31] and out.accept_lengths == [5] * 6
    ids4 = prompt(4)
    ref4 = plain_greedy(model, "llama", ids4, 40)
    branch = [[1], [1, 1], [1, 1, 1], [0], [0, 0]]
    out = medusa_generate(model, OracleHeads(model, ids4 + ref4, rank=1), ids4, 29, branch)
    assert out.output_ids == ref4[:29] and out.accept_lengths == [4] * 7
    heads = OracleHeads(model, ids + ref)
    for n in (1, 2, 7, 13):
        assert medusa_generate(model, heads, ids, n, "8_node").output_ids == ref[:n]
    j = next(i for i in range(3, 40) if ref[i] not in ref[:i])
    assert medusa_generate(model, heads, ids, 40, "8_node", eos_ids=(ref[j],)).output_ids == ref[:j + 1]


def test_device_loop_takes_sequential_oracle_heads(models, device_loop):
    """rnn-style heads on the device: each depth is fed its parents' drafted tokens (a sequential
    oracle proposes garbage for a wrong path), so full depth is accepted only if they are right."""
    model = models("llama")
    ids = prompt(3)
    ref = plain_greedy(model, "llama", ids, 40)
    heads = OracleHeads(model, ids + ref, sequential=True)
    assert device_loop_ok(model, heads, Sampling(), None)
    out = medusa_generate(model, heads, ids, 31, "8_node")
    assert out.output_ids == ref[:31] and out.accept_lengths == [5] * 6
    branch = [[1], [1, 1], [1, 1, 1], [0], [0, 0]]
    out = medusa_generate(model, OracleHeads(model, ids + ref, rank=1, sequential=True), ids, 29, branch)
    assert out.output_ids == ref[:29] and out.accept_lengths == [4] * 7


def test_device_loop_only_where_it_applies(models, device_loop):
    model = models("qwen2")
    assert device_loop_ok(model, random_heads(model, "rnn"), Sampling(), None)   # depth by depth too
    assert not device_loop_ok(model, random_heads(model, "medusa"), Sampling("sample", temperature=0.7), None)
    with options.override(device_loop="off"):
        assert not device_loop_ok(model, random_heads(model, "medusa"), Sampling(), None)
    with options.override(device_loop="auto"):                  # the default: on a GPU only
        assert not device_loop_ok(model, random_heads(model, "medusa"), Sampling(), None)
    with pytest.raises(UsageError, match=r"MEDUSA_DEVICE_LOOP must be auto, on or off .*got 'yes'"):
        options.from_environ({"MEDUSA_DEVICE_LOOP": "yes"})


# ---------------------------------------------------------------- heads with a prefix layer
def prefix_heads(model, family):
    """Seeded heads with Hydra++'s prefix layer, its output projections made non-zero (at init
    the layer is the identity, which would not test that decoding feeds it the right states)."""
    jt.set_global_seed(0)
    cfg = HeadConfig(family=family, num_heads=K, hidden_size=model.config.hidden_size,
                              vocab_size=model.config.vocab_size, share_lm_head=True, prefix_layer=True)
    heads = build_heads(cfg)
    rng = np.random.default_rng(3)
    for layer in (heads.prefix.o, heads.prefix.down):
        layer.weight.assign(jt.array(rng.standard_normal(layer.weight.shape).astype("float32") * 0.05))
    return heads


@pytest.mark.parametrize("head_family,preset", [("rnn", "8_node"), ("medusa", "mc_sim_7b_63")])
def test_prefix_layer_heads_are_lossless_and_read_every_accepted_state(models, monkeypatch, head_family, preset):
    model = models("qwen2")
    heads = prefix_heads(model, head_family)
    seen = []
    real = heads.read_prefix
    monkeypatch.setattr(heads, "read_prefix", lambda state, h: seen.append(h.shape[1]) or real(state, h))
    out = medusa_generate(model, heads, prompt(1), N_NEW, preset)
    assert out.output_ids == plain_greedy(model, "qwen2", prompt(1))
    # the prompt, then each step's accepted path (root first): every cached position exactly once
    assert seen[0] == len(prompt(1)) and seen[1:] == out.accept_lengths[:len(seen) - 1]


@pytest.mark.parametrize("head_family,preset", [("rnn", "8_node"), ("medusa", "mc_sim_7b_63")])
def test_prefix_layer_heads_on_the_device_loop(models, monkeypatch, head_family, preset):
    """The device loop feeds the prefix layer the whole padded path and keeps only the accepted
    states' keys and values: the same tokens, accept lengths and prefix cache as the host loop."""
    model = models("qwen2")
    heads = prefix_heads(model, head_family)
    lengths = []
    real = heads.keep_prefix
    monkeypatch.setattr(heads, "keep_prefix", lambda state, n: real(state, n) or lengths.append(state["past"][0].shape[2]))
    device = device_equals_host(model, heads, preset, monkeypatch)
    # after each step the prefix layer holds the prompt and every accepted position, no padding
    # (the last step's tokens may be cut at N_NEW; its path is kept whole)
    want = len(prompt(1)) + np.cumsum(device.accept_lengths)
    assert len(lengths) == len(device.accept_lengths) and lengths[:-1] == list(want[:-1])


def test_prefix_layer_heads_sample(models):
    model = models("qwen2")
    heads = prefix_heads(model, "rnn")
    out = medusa_generate(model, heads, prompt(2), 12, "8_node", sampling=Sampling("sample", temperature=0.7, seed=1))
    assert len(out.output_ids) == 12
