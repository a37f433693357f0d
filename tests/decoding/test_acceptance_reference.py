"""Typical acceptance, the typical root token, top-p and speculative sampling against numpy ports
of the reference formulas, at settings between the extremes (the extremes, accept-all and
accept-none, are in test_decoding.py).

- Typical acceptance: FasterDecoding/Medusa, medusa/model/utils.py, evaluate_posterior
  (posterior_threshold 0.09, posterior_alpha 0.3: the defaults of its medusa_generate), ported
  below over the cartesian candidates (one row per leaf path), on a real tree step of the tiny
  model. One deviation, the project's documented rule: the padding of a short path never counts
  (upstream pads with token 0 and would test it).
- The typical root token: the same file's get_typical_one_token (drop p < threshold, sample).
- Top-p: the nucleus, the smallest set of most likely tokens whose mass reaches top_p.
- Speculative sampling over a tree: each emitted token is distributed as plain temperature +
  top-p sampling from the base model (a frequency test of the first two tokens of a walk).
"""
import numpy as np
import pytest
from support import FixedScores

from medusa.decoding import acceptance, core, steps
from medusa.decoding.sampling import Sampling, choose_token, top_p_filter
from medusa.decoding.tree import load_choices
from medusa.decoding.tree_vars import resolve_tree
from medusa.model import weights

K = 4


# ---------------------------------------------------------------- the reference formulas, in numpy
def ref_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_evaluate_posterior(logits, candidates, valid, temperature, posterior_threshold, posterior_alpha):
    """Medusa's evaluate_posterior (typical): logits [P, D + 1, V], candidates [P, D + 1] (column 0
    the root), valid [P, D + 1] (False on padding) -> (best candidate row, accept length)."""
    posterior_prob = ref_softmax(logits[:, :-1] / temperature)
    candidates_prob = np.take_along_axis(posterior_prob, candidates[:, 1:, None], -1)[..., 0]
    posterior_entropy = -np.sum(posterior_prob * np.log(posterior_prob + 1e-5), -1)
    threshold = np.minimum(np.ones_like(posterior_entropy) * posterior_threshold,
                           np.exp(-posterior_entropy) * posterior_alpha)
    posterior_mask = (candidates_prob > threshold) & valid[:, 1:]
    candidates_accept_length = np.cumprod(posterior_mask, 1).sum(1)
    accept_length = candidates_accept_length.max()
    if accept_length == 0:
        return 0, 0, posterior_mask
    best_candidates = np.flatnonzero(candidates_accept_length == accept_length)
    likelihood = np.sum(np.log(candidates_prob[best_candidates, :accept_length]), -1)
    return int(best_candidates[np.argmax(likelihood)]), int(accept_length), posterior_mask


def ref_typical_set(logit, temperature, posterior_threshold, posterior_alpha):
    """get_typical_one_token's distribution: tokens with p < threshold removed, renormalised."""
    probs = ref_softmax(logit / temperature)
    entropy = -np.sum(probs * np.log(probs + 1e-5))
    threshold = min(posterior_threshold, np.exp(-entropy) * posterior_alpha)
    kept = np.where(probs < threshold, 0.0, probs)
    return kept / kept.sum()


def ref_nucleus(probs, top_p):
    """The smallest set of most likely tokens whose mass reaches top_p, renormalised."""
    order = np.argsort(-probs, kind="stable")
    n = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1     # first prefix with mass >= top_p
    kept = np.zeros_like(probs)
    kept[order[:n]] = probs[order[:n]]
    return kept / kept.sum()


# ---------------------------------------------------------------- typical acceptance on a real step
@pytest.fixture(scope="module")
def model(tiny_pkl):
    return weights.load_model(tiny_pkl("llama"), "float32")


def tree_step(model, prompt, tree, tokens, sampling):
    """Prefill the prompt, then one tree_decode of `tokens` -> TreeScores."""
    cache = core.new_cache(model, 1, len(prompt) + tree.num_nodes)
    steps.prefill(model, cache, prompt, Sampling(), None)
    return steps.tree_decode(model, cache, tree, tokens, sampling)[1]


def all_rows(model, scores):
    """Every node's logits [N, V] fp64, computed the way TreeScores computes a row."""
    return model.logits(scores.hidden)[0].numpy().astype(np.float64)


def near(logit, sampling, choice, rank):
    """A drafted token: the parent's rank-`rank` token, or one whose probability is nearest 1.5x
    ("above") or 1/1.5 ("below") the reference threshold, away from it by more than rounding."""
    probs = ref_softmax(logit / sampling.temperature)
    if choice == "rank":
        return int(np.argsort(-probs, kind="stable")[rank])
    entropy = -np.sum(probs * np.log(probs + 1e-5))
    threshold = min(sampling.posterior_threshold, sampling.posterior_alpha * np.exp(-entropy))
    side = probs > threshold if choice == "above" else probs < threshold
    target = threshold * (1.5 if choice == "above" else 1 / 1.5)
    return int(np.argmin(np.where(side, np.abs(np.log(probs / target)), np.inf)))


def node_ids(paths):
    """Node id of each path: 1 + its place in the paths sorted by (length, path) (root: ())."""
    ordered = sorted(map(tuple, paths), key=lambda p: (len(p), p))
    return {(): 0, **{p: i + 1 for i, p in enumerate(ordered)}}


@pytest.mark.parametrize("preset,temperature,seed,threshold,alpha", [
    ("mc_sim_7b_63", 0.7, 0, 0.09, 0.3), ("mc_sim_7b_63", 0.05, 1, 0.09, 0.3), ("8_node_2", 0.1, 3, 0.09, 0.3),
    ("16_node", 0.5, 2, 0.0005, 0.3)])     # the last: the tiny model's entropy is high, here epsilon binds
def test_typical_acceptance_is_medusas_evaluate_posterior(model, preset, temperature, seed, threshold, alpha):
    sampling = Sampling("typical", temperature=temperature, posterior_threshold=threshold, posterior_alpha=alpha)
    prompt = [int(t) for t in np.random.default_rng(seed).integers(6, 320, 7)]
    paths = load_choices(preset, K)
    node = node_ids(paths)
    tree = resolve_tree(preset, K)
    tokens = np.zeros(len(node), np.int64)
    tokens[0] = core.generate(model, prompt, 1).output_ids[0]
    depth = max(map(len, paths))
    rng = np.random.default_rng(seed)
    choice = {p: rng.choice(["rank", "above", "below"], p=[0.4, 0.3, 0.3]) for p in node if p}
    for d in range(1, depth + 1):      # each node's token: from its parent's distribution (see near)
        rows = all_rows(model, tree_step(model, prompt, tree, tokens, sampling))
        for p in (p for p in node if len(p) == d):
            tokens[node[p]] = near(rows[node[p[:-1]]], sampling, choice[p], p[-1])
    scores = tree_step(model, prompt, tree, tokens, sampling)
    rows = all_rows(model, scores)

    leaves = [p for p in node if p and not any(len(q) > len(p) and q[:len(p)] == p for q in node)]
    index = np.zeros((len(leaves), depth + 1), np.int64)       # the cartesian candidates, padded
    valid = np.zeros((len(leaves), depth + 1), bool)
    for i, leaf in enumerate(leaves):
        for k in range(len(leaf) + 1):
            index[i, k], valid[i, k] = node[leaf[:k]], True
        index[i, len(leaf) + 1:] = index[i, len(leaf)]
    best, length, mask = ref_evaluate_posterior(rows[index], tokens[index], valid, temperature, threshold, alpha)
    assert mask[valid[:, 1:]].any() and not mask[valid[:, 1:]].all()             # between the extremes

    path, bonus = steps.evaluate_posterior(tree, tokens, scores, sampling, np.random.default_rng(0))
    assert path == [int(n) for n in index[best, :length + 1]]
    assert bonus == int(np.argmax(rows[path[-1]]))                                # root="argmax"


# ---------------------------------------------------------------- the typical root token and top-p
def distributions(n=6, V=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(V) * s for s in np.linspace(0.5, 4.0, n)]   # flat to peaked


@pytest.mark.parametrize("threshold,alpha", [(0.09, 0.3), (0.03, 0.5)])
def test_typical_root_token_samples_get_typical_one_token(threshold, alpha):
    sampling = Sampling("typical", temperature=0.8, posterior_threshold=threshold, posterior_alpha=alpha, root="sample")
    rng = np.random.default_rng(1)
    sizes = set()
    for logit in distributions():
        want = ref_typical_set(logit, 0.8, threshold, alpha)
        draws = np.array([acceptance.typical_sample(logit, sampling, rng) for _ in range(4000)])
        assert set(draws) <= set(np.flatnonzero(want))                   # never outside the typical set
        freq = np.bincount(draws, minlength=len(want)) / len(draws)
        assert np.abs(freq - want).max() < 0.03
        sizes.add(int((want > 0).sum()))
    assert len(sizes) > 2 and max(sizes) < len(want)                     # sets of several sizes, none all


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.8, 0.95])
def test_top_p_keeps_the_nucleus(top_p):
    rng = np.random.default_rng(2)
    for logit in distributions(seed=3):
        probs = ref_softmax(logit / 0.7)
        want = ref_nucleus(probs, top_p)
        got = top_p_filter(probs, top_p)
        np.testing.assert_array_equal(got > 0, want > 0)                  # the same set, exactly
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)        # renormalised alike (rounding)
        draws = np.array([choose_token(logit, Sampling("sample", temperature=0.7, top_p=top_p), rng)
                          for _ in range(3000)])
        assert set(draws) <= set(np.flatnonzero(want))
        assert np.abs(np.bincount(draws, minlength=len(want)) / len(draws) - want).max() < 0.035


# ---------------------------------------------------------------- speculative sampling, frequencies
def test_speculative_walk_emits_tokens_as_plain_top_p_sampling():
    """Two emitted tokens of a tree walk at temperature 0.8, top_p 0.85: the first is distributed
    as the root's filtered distribution; after the first draft of depth 1 is accepted, the next
    token as that node's, whatever the drafts (some outside the nucleus)."""
    tree = resolve_tree([[0], [1], [2], [0, 0], [0, 1]], 2)
    V = 8
    rng = np.random.default_rng(4)
    rows = np.log(rng.dirichlet(np.ones(V) * 0.7, size=tree.num_nodes))
    s = Sampling("sample", temperature=0.8, top_p=0.85)
    p_root = ref_nucleus(ref_softmax(rows[0] / 0.8), 0.85)
    p_child = ref_nucleus(ref_softmax(rows[1] / 0.8), 0.85)
    order = np.argsort(-p_root)
    tokens = np.array([0, order[0], order[1], order[-1], np.argmax(p_child), np.argmin(p_child)])  # node 3: outside
    first, second = np.zeros(V), np.zeros(V)
    for _ in range(12000):
        path, bonus = acceptance.speculative_walk(tree.buffers, tokens, FixedScores(rows), s, rng)
        emitted = [int(tokens[n]) for n in path[1:]] + [bonus]
        first[emitted[0]] += 1
        if len(path) > 1 and path[1] == 1:
            second[emitted[1]] += 1
    assert first[p_root == 0].sum() == 0 and second[p_child == 0].sum() == 0     # never outside the nuclei
    assert np.abs(first / first.sum() - p_root).max() < 0.02
    assert second.sum() > 2000 and np.abs(second / second.sum() - p_child).max() < 0.03
