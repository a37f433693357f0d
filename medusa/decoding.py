"""Medusa tree decoding: draft a tree of candidates with the heads, verify it in one base-model
call, keep the longest accepted path.

Reference: FasterDecoding/Medusa, medusa/model/utils.py (generate_candidates, tree_decoding,
evaluate_posterior, update_inference_inputs) and the Medusa paper (Cai et al. 2024, 3.3.1
typical acceptance). One step reads like the paper:

    tree tokens  = propose(...)              # root token + per-depth top-k of the heads
    hidden, sc   = tree_decode(...)          # base model on all N tree nodes, KV cache
    path, bonus  = evaluate_posterior(...)   # accepted node ids (root first), next token
    accepted     = update_inputs(...)        # keep exactly the accepted path in the cache
    hidden_last  = heads.read_prefix(...)    # what the heads draft from (heads.py)

State between steps: the cache holds every token before the root; the root (last emitted
token) is not cached yet and is node 0 of the next tree. `hidden_last` [1, 1, H] is the base
state whose logits chose the root; head k on it proposes the nodes at depth k + 1. Heads with a
prefix layer (Hydra++) read every newly cached position's state first (their own small cache)
and draft from the layer's output at the last one.

Acceptance modes (`Sampling.mode`):
- greedy:  a node is accepted when its token is the argmax of its parent's base logits; the
  output equals plain greedy decoding (lossless).
- typical: Medusa's typical acceptance, p(token) > min(threshold, alpha * exp(-entropy)) of
  the parent's temperature-scaled distribution; longest accepted path, ties broken by
  likelihood; the bonus token is the argmax (root="argmax", Medusa's fast variant) or sampled
  from the typical set (root="sample").
- sample:  speculative sampling over the tree (SpecInfer-style, drafts are deterministic):
  at each node the children are tried in rank order, child x is accepted with probability
  r(x) where r is the residual distribution (temperature + top-p filtered base distribution
  with rejected siblings removed and renormalised); when all children fail the bonus token is
  drawn from r. The tokens are distributed exactly as plain sampling with the same settings.
With temperature <= 0, typical and sample behave like greedy.

Host/device traffic per step: the heads' top-k indices (one transfer per tree depth for
sequential heads) and the tree's argmax (+ two small float vectors for typical). Sample mode
also reads the logits rows of the nodes it visits; on the CPU a leaf's logits are computed only
when the accepted path ends there (see tree_decode).
"""
import functools
import os
import time
from dataclasses import dataclass, field

import numpy as np

from medusa import core
from medusa.errors import UsageError
from medusa.model import NEG_INF
from medusa.runtime import jt
from medusa.sampling import Sampling, softmax, top_p_filter
from medusa.tree import build_tree_buffers, load_choices

STAT_NAMES = ("init", "medusa", "tree", "posterior", "update")  # wall-time buckets


@dataclass
class MedusaResult:
    output_ids: list                 # new tokens only (EOS included if hit)
    accept_lengths: list = field(default_factory=list)  # tokens added per step (prefill excluded)
    times: dict = field(default_factory=lambda: dict.fromkeys(STAT_NAMES, 0.0))  # seconds

    @property
    def steps(self):
        return len(self.accept_lengths)

    @property
    def wall_time(self):
        return sum(self.times.values())


# ---------------------------------------------------------------- the tree, once per spec
@dataclass(frozen=True, eq=False)
class Tree:
    """TreeBuffers plus what the loop reads every step, built once per tree spec."""
    buffers: object             # tree.TreeBuffers
    children: tuple             # children[n]: child node ids, in rank order
    ancestry: tuple             # ancestry[n]: node ids root..n
    rank: np.ndarray            # [N] rank of each node among its siblings (root 0)
    mask_block: object          # jt [1, 1, N, N] additive tree mask
    positions: object           # jt [1, N] int32 node depths
    all_nodes: "Scoring"        # every node scored (GPU)
    internal: "Scoring"         # only nodes with children scored (CPU), see scored()

    @property
    def num_nodes(self):
        return self.buffers.num_nodes

    def mask(self, past_len):
        """Additive mask [1, 1, N, past_len + N]: every cached position plus the tree block."""
        if past_len == 0:
            return self.mask_block
        return jt.concat([jt.zeros((1, 1, self.num_nodes, past_len), "float32"), self.mask_block], dim=3)

    def scored(self, leaves: bool) -> "Scoring":
        """The nodes whose base logits tree_decode computes: all, or (leaves=False) only those
        with children, whose logits verify the children; a leaf's logits are needed only for
        the bonus token when the whole path to it is accepted (computed then, one row)."""
        return self.all_nodes if leaves else self.internal


@dataclass(frozen=True)
class Scoring:
    nodes: np.ndarray           # [M] scored node ids, ascending
    slot: np.ndarray            # [N] row of each node in the scored logits, -1 = not scored
    nodes_var: object           # jt [M] int32
    parent_slot_var: object     # jt [N - 1] int32 scored row of the parent of nodes 1..N-1


def _scoring(buf, nodes):
    slot = np.full(buf.num_nodes, -1, dtype=np.int64)
    slot[nodes] = np.arange(len(nodes))
    return Scoring(nodes=nodes, slot=slot, nodes_var=jt.array(nodes.astype(np.int32)).stop_grad(),
                   parent_slot_var=jt.array(slot[buf.parent[1:]].astype(np.int32)).stop_grad())


def _spec_key(choices):
    if isinstance(choices, (list, tuple)):
        return tuple(tuple(int(c) for c in p) for p in choices)
    return str(choices)


@functools.lru_cache(maxsize=32)
def _tree_for(key, num_heads):
    spec = [list(p) for p in key] if isinstance(key, tuple) else key
    buf = build_tree_buffers(load_choices(spec, num_heads))
    n = buf.num_nodes
    children = [[] for _ in range(n)]
    for node in range(1, n):
        children[buf.parent[node]].append(node)  # nodes are sorted by path, so by rank
    ancestry = [(0,)]
    for node in range(1, n):
        ancestry.append(ancestry[buf.parent[node]] + (node,))
    rank = np.array([0] + [p[-1] for p in buf.choices], dtype=np.int64)
    block = np.where(buf.attn_mask, 0.0, NEG_INF).astype(np.float32)[None, None]
    internal = np.array([node for node in range(n) if children[node]], dtype=np.int64)
    return Tree(buffers=buf, children=tuple(tuple(c) for c in children), ancestry=tuple(ancestry),
                rank=rank, mask_block=jt.array(block).stop_grad(),
                positions=jt.array(buf.position_ids.astype(np.int32)[None]).stop_grad(),
                all_nodes=_scoring(buf, np.arange(n)), internal=_scoring(buf, internal))


@dataclass(frozen=True)
class DeviceTables:
    """A tree's index tables on the device, for the device loop (_device_stream)."""
    parent: object              # jt [N - 1] int32 parent node of nodes 1..N-1
    rows: object                # jt [P, depth + 1] int32 root-to-leaf node ids, padding 0
    valid: object               # jt [P, depth + 1] int32 1 where a path has a node (buffers.valid_mask)
    order: object               # jt [P] int32 P - 1 - p: ties between equal lengths go to the first path
    select: object              # jt [sum(topk)] int32 where each flat candidate sits in the heads' [depth, kmax] top-k
    tree_indices: object        # jt [N] int32 node -> flat candidate (buffers.tree_indices)


def _device_ints(a):
    """An index table on the device: int32, no gradient."""
    return jt.array(np.ascontiguousarray(a, dtype=np.int32)).stop_grad()


@functools.lru_cache(maxsize=32)
def _tables_for(tree):
    buf = tree.buffers
    arr = _device_ints
    kmax = max(buf.topk)
    select = [d * kmax + j for d, k in enumerate(buf.topk) for j in range(k)]
    P = buf.retrieve_indices.shape[0]
    return DeviceTables(parent=arr(buf.parent[1:]), rows=arr(np.where(buf.valid_mask, buf.retrieve_indices, 0)),
                        valid=arr(buf.valid_mask), order=arr(np.arange(P)[::-1]), select=arr(select),
                        tree_indices=arr(buf.tree_indices))


def resolve_tree(choices, num_heads) -> Tree:
    """The (cached) Tree of a preset name, JSON file path or list of paths."""
    return _tree_for(_spec_key(choices), int(num_heads))


# ---------------------------------------------------------------- token choice on the host
def _probs(row, sampling):
    """Temperature + top-p filtered distribution of one logits row (fp64)."""
    return top_p_filter(softmax(row, sampling.temperature), sampling.top_p)


def _typical_threshold(entropy, sampling):
    """min(epsilon, delta * exp(-H)), H the entropy as Medusa computes it (log(p + 1e-5))."""
    return np.minimum(sampling.posterior_threshold, sampling.posterior_alpha * np.exp(-entropy))


def _typical_sample(row, sampling, rng):
    """Sample from the tokens whose probability passes the typical threshold (Medusa's
    get_typical_one_token)."""
    p = softmax(row, sampling.temperature)
    entropy = -np.sum(p * np.log(p + 1e-5))
    keep = p >= _typical_threshold(entropy, sampling)
    keep[np.argmax(p)] = True                # a threshold above every p would leave nothing
    p = np.where(keep, p, 0.0)
    return int(rng.choice(len(p), p=p / p.sum()))


def _root_token(top_of, row_of, sampling, rng, vocab):
    """The next token at a node where no candidate is tried: argmax, typical or plain sample.
    top_of() / row_of(): that node's argmax token / fp64 logits row, fetched only when needed;
    vocab (model.VocabMap) turns a sampled logit row index into its token id."""
    kind = sampling.kind
    if kind == "greedy" or (kind == "typical" and sampling.root == "argmax"):
        return int(top_of())
    if kind == "typical":
        return int(vocab.tokens(_typical_sample(row_of(), sampling, rng)))
    p = _probs(row_of(), sampling)
    return int(vocab.tokens(rng.choice(len(p), p=p)))


# ---------------------------------------------------------------- the steps
def topk_indices(x, k):
    """Indices of the k largest entries along the last axis, best first: [..., V] -> [..., k].

    On the CPU: k argmax passes, each masking the previous winner, since Jittor's CPU topk sorts
    whole rows (19 ms for [4, 49152] at any k; this takes 0.5 ms at k = 2, 6 ms at k = 10).
    On a GPU: jt.topk, one kernel instead of 2k - 1."""
    if jt.flags.use_cuda:
        return jt.topk(x, k, dim=-1)[1].int32()
    cols = jt.arange(x.shape[-1]).int32()
    out = []
    for j in range(k):
        best = jt.argmax(x, -1)[0]
        out.append(best)
        if j + 1 < k:
            x = jt.where(cols == best.unsqueeze(-1), jt.float32(-1e30), x)
    return jt.stack(out, -1)


def prefill(model, cache, prompt_ids, sampling, rng):
    """Run the prompt into the cache -> (its hidden states [1, P, H], first new token)."""
    hidden = core.prefill(model, cache, prompt_ids)
    logits = core.last_logits(model, hidden[:, -1:])               # [V]
    token = _root_token(lambda: model.vocab.tokens(jt.argmax(logits, 0)[0].item()),
                        lambda: logits.numpy().astype(np.float64), sampling, rng, model.vocab)
    return hidden, token


def head_projection(model, heads):
    """(the [H, V'] matrix the heads project onto, logit index -> token id): the base lm_head, or
    only its draft-vocabulary columns when the heads have one (heads.propose_from)."""
    draft = getattr(heads, "draft_vocab", None)
    if draft is None:
        return model.lm_head_t(), model.vocab.tokens
    weight, rows = draft.projection(model)
    return weight, lambda index: model.vocab.tokens(rows[np.asarray(index)])


def propose(model, heads, tree, hidden_last, root):
    """generate_candidates: the tree's tokens [N] (numpy int64), node 0 = root."""
    if getattr(heads, "sequential", False):
        return _propose_sequential(model, heads, tree, hidden_last, root)
    buf = tree.buffers
    weight, tokens_of = head_projection(model, heads)
    logits, _ = heads(hidden_last, None, weight, model.embed_weight(),
                      project=range(buf.depth), prefixed=True)                    # [depth, 1, 1, V]
    top = tokens_of(topk_indices(logits[:, 0, 0], max(buf.topk)).numpy())          # [depth, k] token ids
    flat = np.concatenate([[root]] + [top[d, :k] for d, k in enumerate(buf.topk)])
    return flat[buf.tree_indices].astype(np.int64)


def _propose_sequential(model, heads, tree, hidden_last, root):
    """Heads that read the drafted tokens (rnn): depth by depth, head d runs once per node at
    depth d, fed that node's root-to-node tokens, and its top-k become the node's children."""
    buf, K = tree.buffers, heads.config.num_heads
    weight, tokens_of = head_projection(model, heads)
    tokens = np.zeros(tree.num_nodes, dtype=np.int64)
    tokens[0] = root
    for d in range(buf.depth):
        parents = [n for n in buf.nodes_at_depth[d] if tree.children[n]]
        drafted = np.zeros((1, len(parents), K), dtype=np.int32)   # tokens t+1..t+d+1, 0-padded
        for i, p in enumerate(parents):
            drafted[0, i, :d + 1] = model.vocab.embedding_rows(tokens[list(tree.ancestry[p])])
        hidden = hidden_last.broadcast((1, len(parents), hidden_last.shape[-1]))
        logits, _ = heads(hidden, jt.array(drafted), weight, model.embed_weight(), project=[d], prefixed=True)
        top = tokens_of(topk_indices(logits[0, 0], buf.topk[d]).numpy())            # [parents, topk[d]]
        for i, p in enumerate(parents):
            for c in tree.children[p]:
                tokens[c] = top[i, tree.rank[c]]
    return tokens


@dataclass
class TreeScores:
    """What the posterior reads from the tree's base logits. Nodes not scored by tree_decode
    (leaves, on the CPU) get their logits row on demand from the hidden states."""
    scoring: Scoring
    argmax: np.ndarray          # [N] argmax of each scored node's logits, -1 elsewhere
    logits: object              # jt [M, V] fp32 logits of the scored nodes
    hidden: object              # jt [1, N, H] the tree's hidden states
    model: object
    cand_logp: np.ndarray = None  # [N] typical: log p(token[n] | parent), node 0 unused
    entropy: np.ndarray = None    # [N] typical: entropy of each scored node (nan elsewhere)

    def _logits(self, node):
        slot = self.scoring.slot[node]
        return self.logits[slot] if slot >= 0 else self.model.logits(self.hidden[:, node:node + 1])[0, 0]

    def row(self, node):
        return self._logits(node).numpy().astype(np.float64)

    def top(self, node):
        """The argmax token id after `node`."""
        if self.argmax[node] >= 0:
            return int(self.argmax[node])
        return int(self.model.vocab.tokens(jt.argmax(self._logits(node), 0)[0].item()))


def score_leaves() -> bool:
    return bool(jt.flags.use_cuda)


def tree_decode(model, cache, tree, tokens, sampling):
    """The base model on all tree nodes at positions past_len + depth -> (hidden [1, N, H],
    TreeScores). Forces the scores, so the timing of this step is honest.

    On the CPU only nodes with children get logits here: Jittor's CPU matmul costs per row, and
    the [H, V] projection of every leaf (42 of mc_sim_7b_63's 64 nodes) would be wasted on all
    but the one leaf a fully accepted path ends at. On a GPU the extra rows are nearly free and
    scoring every node saves a round trip."""
    scoring = tree.scored(leaves=score_leaves())
    past = cache.length
    tokens_var = jt.array(tokens.astype(np.int32)[None])
    hidden = core.forward(model, tokens_var, tree.positions + past, tree.mask(past), cache)  # [1, N, H]
    logits = model.logits(hidden[:, scoring.nodes_var])[0]                        # [M, V]
    argmax_var = jt.argmax(logits, 1)[0]
    argmax = np.full(tree.num_nodes, -1, dtype=np.int64)
    if sampling.kind != "typical":
        jt.sync([argmax_var, logits])
        argmax[scoring.nodes] = model.vocab.tokens(argmax_var.numpy())
        return hidden, TreeScores(scoring, argmax, logits, hidden, model)
    z = logits / sampling.temperature
    z = z - z.max(1, keepdims=True)
    logp = z - jt.log(jt.exp(z).sum(1, keepdims=True))              # [M, V]
    entropy_var = -(jt.exp(logp) * jt.log(jt.exp(logp) + 1e-5)).sum(1)  # [M]
    cand_rows = jt.array(model.vocab.rows(tokens[1:]).astype(np.int32))  # drafts are always in the vocabulary
    cand = logp[scoring.parent_slot_var, cand_rows]                 # [N - 1]
    jt.sync([argmax_var, entropy_var, cand])
    argmax[scoring.nodes] = model.vocab.tokens(argmax_var.numpy())
    entropy = np.full(tree.num_nodes, np.nan)
    entropy[scoring.nodes] = entropy_var.numpy()
    return hidden, TreeScores(scoring, argmax, logits, hidden, model,
                              np.concatenate([[0.0], cand.numpy()]), entropy)


def _best_path(tree, ok, score=None):
    """Longest root-to-node run of accepted nodes over the leaf paths (padding never counts);
    ties go to the highest summed `score`, else the first. -> node ids, root first."""
    buf = tree.buffers
    rows = np.where(buf.valid_mask, buf.retrieve_indices, 0)
    accepted = ok[rows] & buf.valid_mask
    accepted[:, 0] = True
    lengths = np.cumprod(accepted, axis=1).sum(axis=1)
    best = np.flatnonzero(lengths == lengths.max())
    if score is not None and len(best) > 1:
        best = best[np.argmax([score[rows[b, 1:lengths[b]]].sum() for b in best])]
    else:
        best = best[0]
    return [int(n) for n in rows[best, :lengths[best]]]


def _speculative_walk(tree, tokens, scores, sampling, rng):
    """Sample mode: try the children of each reached node in rank order (see the docstring)."""
    node, path, vocab = 0, [0], scores.model.vocab
    r = _probs(scores.row(0), sampling)                  # over logit rows (== token ids unless reduced)
    while True:
        for child in tree.children[node]:
            x = int(vocab.rows(tokens[child]))
            if rng.random() < r[x]:
                node = child
                path.append(child)
                r = _probs(scores.row(child), sampling)
                break
            r[x] = 0.0
            r /= r.sum()
        else:
            return path, int(vocab.tokens(rng.choice(len(r), p=r)))


def evaluate_posterior(tree, tokens, scores, sampling, rng):
    """-> (accepted node ids, root first; the bonus token from the last accepted node)."""
    kind, parent = sampling.kind, tree.buffers.parent
    if kind == "sample":
        return _speculative_walk(tree, tokens, scores, sampling, rng)
    if kind == "greedy":
        ok = np.concatenate([[True], tokens[1:] == scores.argmax[parent[1:]]])
        path = _best_path(tree, ok)
    else:
        with np.errstate(divide="ignore"):  # threshold 0 -> log 0 = -inf: accept everything
            log_threshold = np.log(_typical_threshold(scores.entropy, sampling))
        ok = np.concatenate([[True], scores.cand_logp[1:] > log_threshold[parent[1:]]])
        path = _best_path(tree, ok, scores.cand_logp)
    last = path[-1]
    return path, _root_token(lambda: scores.top(last), lambda: scores.row(last), sampling, rng, scores.model.vocab)


def update_inputs(cache, tree, path, hidden, every_state=False):
    """Keep exactly the accepted path in the cache -> the base state of its last node [1, 1, H],
    or with `every_state` the states of all its nodes [1, n, H], root first (what a prefix layer
    reads: heads.read_prefix)."""
    past = cache.length - tree.num_nodes
    cache.compact(past, past + np.asarray(path))
    if every_state and len(path) > 1:
        accepted = hidden[:, jt.array(np.asarray(path, np.int32))]
    else:
        accepted = hidden[:, path[-1]:path[-1] + 1]
    jt.sync(cache.keys + cache.values + [accepted])
    return accepted


def _clip(new, eos_ids, room):
    """Truncate a step's tokens after the first EOS and to the `room` left."""
    for i, t in enumerate(new):
        if t in eos_ids:
            new = new[:i + 1]
            break
    return new[:room]


# ---------------------------------------------------------------- the loop
@dataclass
class _Step:
    """One Medusa step's output, held back until the full-vocabulary check (if any) passes."""
    new: list                   # its tokens
    rows: list                  # jt [H] each: the hidden state each token was chosen from (checked only)
    cache_start: int            # the cache's length before the step (its root went there)
    stats: dict


class _VocabCheck:
    """Medusa's side of Sampling.vocab_check (greedy on a reduced vocabulary that holds the full
    head): steps wait until they hold core.CheckInterval's tokens (or the end), then all their
    tokens are checked in one product with the full head (core.first_wrong). At the first wrong
    token its step keeps the tokens before it plus the full model's token, the cache forgets
    everything after those, later steps are dropped (yielded with no tokens: their time was
    spent), and decoding resumes from the corrected token, the heads drafting from the state that
    chose it."""

    def __init__(self, model, every):
        self.model, self.interval = model, core.CheckInterval(every)

    def due(self, pending, done) -> bool:
        return done or sum(len(p.new) for p in pending) >= self.interval.now

    def correct(self, pending, cache):
        """Check the pending steps (fixing them in place) -> None when right, else (the full
        model's token, the state that chose it [1, 1, H], tokens dropped)."""
        wrong = core.first_wrong(self.model, [r for p in pending for r in p.rows],
                                 [t for p in pending for t in p.new])
        self.interval.update(wrong is not None)
        if wrong is None:
            return None
        index, token = wrong
        for i, step in enumerate(pending):                 # the step holding the wrong token
            if index < len(step.new):
                break
            index -= len(step.new)
        dropped = sum(len(q.new) for q in pending[i:]) - index - 1
        step.new = step.new[:index] + [token]
        for q in pending[i + 1:]:
            q.new = []
        cache.truncate(step.cache_start + len(step.new))   # its root and the right tokens after it
        return token, step.rows[index].reshape(1, 1, -1), dropped


def medusa_stream(model, heads, prompt_ids, max_new_tokens, choices="8_node", eos_ids=(), sampling=None,
                  max_len=None):
    """Yield (new_token_ids, {bucket: seconds}) for the prefill ("init") and each Medusa step.

    Stops after an EOS token (included) or max_new_tokens. The cache holds max_len positions
    (default: prompt + max_new_tokens + tree nodes). On a reduced vocabulary with the full head
    (Sampling.vocab_check) steps are yielded once checked, a dropped one with no tokens, and the
    check's time counts as "posterior"."""
    sampling = sampling or Sampling()
    tree = resolve_tree(choices, heads.config.num_heads)
    eos_ids, rng = set(eos_ids), np.random.default_rng(sampling.seed)
    core.check_request(model.config, len(prompt_ids), max_new_tokens)
    core.check_tokens(model, prompt_ids)
    # room for the last tree beyond the output: its extra nodes are verified, never emitted
    cache = core.new_cache(model, 1, max_len or len(prompt_ids) + max_new_tokens + tree.num_nodes)
    every = sampling.check_every(model)
    check = _VocabCheck(model, every) if every else None
    start = time.perf_counter()
    state = heads.prefix_state()
    if check and state is not None:
        raise UsageError("heads with a prefix layer cannot run with the vocabulary check (Sampling.vocab_check): "
                         "its corrections rewind the base cache, not the prefix layer's; run with the check off")
    with jt.no_grad():
        prompt_hidden, root = prefill(model, cache, prompt_ids, sampling, rng)
        hidden_last = heads.read_prefix(state, prompt_hidden)
        if check:                                  # the first token straight from the full head
            root = int(model.full_argmax(prompt_hidden[0, -1:])[0])
    if device_loop_ok(model, heads, sampling, check):
        yield from _device_stream(model, heads, tree, cache, hidden_last, root, max_new_tokens, eos_ids, start, state)
        return
    with jt.no_grad():
        done = root in eos_ids or max_new_tokens == 1
        tokens = None if done else propose(model, heads, tree, hidden_last, root)
    yield [root], {"init": time.perf_counter() - start}
    emitted, pending = 1, []
    while not done:
        stats, clock = {}, time.perf_counter()

        def lap(name):
            nonlocal clock
            now = time.perf_counter()
            stats[name], clock = stats.get(name, 0.0) + now - clock, now

        with jt.no_grad():
            cache_start = cache.length
            hidden, scores = tree_decode(model, cache, tree, tokens, sampling)
            lap("tree")
            path, bonus = evaluate_posterior(tree, tokens, scores, sampling, rng)
            new = _clip([int(tokens[n]) for n in path[1:]] + [bonus], eos_ids, max_new_tokens - emitted)
            rows = [hidden[0, n] for n in path[:len(new)]] if check else None
            pending.append(_Step(new, rows, cache_start, stats))
            emitted += len(new)
            done, root = new[-1] in eos_ids or emitted >= max_new_tokens, new[-1]
            lap("posterior")
            if not done or check:                  # checked: a fix at the end resumes from here
                hidden_last = heads.read_prefix(state, update_inputs(cache, tree, path, hidden, state is not None))
                lap("update")
            release = check is None or check.due(pending, done)
            if check and release:
                fix = check.correct(pending, cache)
                if fix is not None:
                    root, hidden_last, dropped = fix
                    emitted -= dropped
                    done = root in eos_ids or emitted >= max_new_tokens
                lap("posterior")
            if not done:
                tokens = propose(model, heads, tree, hidden_last, root)
                lap("medusa")
        if release:
            for step in pending:
                yield step.new, step.stats
            pending = []


# ---------------------------------------------------------------- the device loop (greedy)
# $MEDUSA_DEVICE_LOOP: auto (the default: on a GPU) | 1 (anywhere: the CPU tests run it so) | 0.
# On the H200 (December) the end-to-end SmolLM2 bench went from 218 to 365 Medusa tokens/s with it
# (and rows_layer); tests/test_gpu.py::test_device_loop_on_cuda holds it to the host loop there.
_DEVICE_LOOP = {"mode": os.environ.get("MEDUSA_DEVICE_LOOP", "auto")}


def device_loop_ok(model, heads, sampling, check) -> bool:
    """The greedy loop that keeps a step on the device (_device_stream) serves this call: greedy,
    heads over the whole vocabulary (no draft vocabulary), the base's full vocabulary, no
    vocabulary check, and $MEDUSA_DEVICE_LOOP asks for it (`auto`: on a GPU). Every head family
    is served: rnn's depth-by-depth drafting and a prefix layer run on the device too (held to
    the host loop by the CPU tests and, on an H200, tests/test_gpu.py::test_device_loop_on_cuda).
    On the CPU the host loop is faster: it skips the leaves' logits, which the device loop
    computes for every node."""
    mode = _DEVICE_LOOP["mode"]
    if mode not in ("0", "1", "auto"):
        raise UsageError(f"$MEDUSA_DEVICE_LOOP must be 0, 1 or auto, got {mode!r}")
    wanted = mode == "1" or (mode == "auto" and bool(jt.flags.use_cuda))
    return (wanted and sampling.kind == "greedy" and getattr(heads, "draft_vocab", None) is None
            and not model.vocab.reduced and check is None)


@dataclass
class SequentialTables:
    """_propose_sequential's bookkeeping as index tables, for drafting on the device. The tokens
    drafted so far live in one vector, `seq` = [0 (padding), root, depth-1 children, depth-2
    children, ...]; per depth d with children: ancestry [P_d, num_heads] positions in seq of each
    parent's root-to-parent tokens (0: padding), children [C_d] where each child's token sits in
    that depth's top-k [P_d * topk[d]]; node_pos [N]: each node's position in seq."""
    ancestry: list
    children: list
    node_pos: object


@functools.lru_cache(maxsize=32)
def _sequential_tables_for(tree, num_heads):
    buf = tree.buffers
    pos = {0: 1}
    ancestry, children = [], []
    for d in range(buf.depth):
        parents = [n for n in buf.nodes_at_depth[d] if tree.children[n]]
        if not parents:                    # no deeper nodes
            break
        table = np.zeros((len(parents), num_heads), np.int32)
        for i, p in enumerate(parents):
            table[i, :d + 1] = [pos[a] for a in tree.ancestry[p]]
        kids = [(i, c) for i, p in enumerate(parents) for c in tree.children[p]]
        base = 1 + len(pos)                # seq's length before this depth's children
        for j, (_, c) in enumerate(kids):
            pos[c] = base + j
        ancestry.append(_device_ints(table))
        children.append(_device_ints([i * buf.topk[d] + tree.rank[c] for i, c in kids]))
    return SequentialTables(ancestry=ancestry, children=children,
                            node_pos=_device_ints([pos[n] for n in range(tree.num_nodes)]))


def _device_propose(model, heads, tree, tables, hidden_last, root):
    """propose() without leaving the device: root jt [1] int32 -> the next tree's tokens jt [1, N]."""
    if getattr(heads, "sequential", False):
        return _device_propose_sequential(model, heads, tree, hidden_last, root)
    buf = tree.buffers
    logits, _ = heads(hidden_last, None, model.lm_head_t(), model.embed_weight(), project=range(buf.depth),
                      prefixed=True)
    top = topk_indices(logits[:, 0, 0], max(buf.topk)).int32()                     # [depth, kmax]
    flat = jt.concat([root.reshape(1), top.reshape(-1)[tables.select]])             # [1 + sum(topk)]
    return flat[tables.tree_indices].reshape(1, -1)


def _device_propose_sequential(model, heads, tree, hidden_last, root):
    """_propose_sequential on the device (rnn heads): depth by depth, each parent's drafted tokens
    gathered from the vector of tokens drafted so far (SequentialTables), its children appended."""
    buf, K = tree.buffers, heads.config.num_heads
    tables = _sequential_tables_for(tree, K)
    seq = jt.concat([jt.zeros((1,), "int32"), root.reshape(1).int32()])
    for d in range(len(tables.ancestry)):
        drafted = seq[tables.ancestry[d]].unsqueeze(0)                                # [1, P_d, K]
        hidden = hidden_last.broadcast((1, drafted.shape[1], hidden_last.shape[-1]))
        logits, _ = heads(hidden, drafted, model.lm_head_t(), model.embed_weight(), project=[d], prefixed=True)
        top = topk_indices(logits[0, 0], buf.topk[d]).int32()                          # [P_d, topk[d]]
        seq = jt.concat([seq, top.reshape(-1)[tables.children[d]]])
    return seq[tables.node_pos].reshape(1, -1)


def _device_step(model, heads, cache, tree, tables, tokens, state=None):
    """One greedy Medusa step built on the device: the tree forward, every node's argmax, the
    longest accepted path (evaluate_posterior's greedy rule, first path on ties), the cache
    moves of that path and the next tree's tokens from the heads (after a prefix layer read the
    path's states: state from heads.prefix_state()). Nothing is fetched: returns
    (fetch jt [depth + 2] int32 = [accepted length n, the path's tokens after the root..., bonus],
    the next tokens, the cache move to sync with them)."""
    depth = tree.buffers.depth
    past = cache.length
    hidden = core.forward(model, tokens, tree.positions + past, tree.mask(past), cache)   # [1, N, H]
    argmax = jt.argmax(model.logits(hidden)[0], 1)[0].int32()                            # [N]
    ok = jt.concat([jt.ones((1,), "int32"), (tokens[0, 1:] == argmax[tables.parent]).int32()])   # the root: always
    accepted = ok[tables.rows] * tables.valid
    lengths = (jt.cumsum(1 - accepted, dim=1) == 0).int32().sum(1)                       # leading ones, [P]
    best = jt.argmax(lengths * accepted.shape[0] + tables.order, 0)[0]                    # longest, then first
    n = lengths[best]                                                                     # [1]
    path = tables.rows[best].reshape(-1)                                                  # [depth + 1]
    steps = jt.arange(depth + 1).int32()
    last = path[n - 1]
    nodes = jt.where(steps < n, path, last.broadcast(path.shape))                        # past the path: repeats
    moved = cache.move(past, nodes + past)
    bonus = argmax[last]
    fetch = jt.concat([n.int32(), tokens[0][path[1:]], bonus.reshape(1)])
    hidden_last = (hidden[:, last].reshape(1, 1, -1) if state is None
                   else heads.read_prefix_row(state, hidden[:, nodes], n - 1))
    return fetch, _device_propose(model, heads, tree, tables, hidden_last, bonus.reshape(1)), moved


def _device_advance(model, heads, cache, tree, tables, tokens, state=None):
    """Run one _device_step, fetch its few ints and keep the accepted path in the cache (and in
    the prefix layer's: state) -> (fetched int64 [depth + 2]: accepted length n, the path's
    tokens, the bonus; the next tokens)."""
    past = cache.length
    fetch, next_tokens, moved = _device_step(model, heads, cache, tree, tables, tokens, state)
    jt.sync([fetch, next_tokens] + ([moved] if moved is not None else []))
    got = fetch.numpy().astype(np.int64)
    cache.truncate(past + int(got[0]))                     # the root and the accepted nodes
    if state is not None:
        heads.keep_prefix(state, int(got[0]))
    return got, next_tokens


def _device_stream(model, heads, tree, cache, hidden_last, root, max_new_tokens, eos_ids, start, state=None):
    """medusa_stream's greedy loop with one fetch per step (a few ints: the accepted length, its
    tokens, the bonus): the step's parts run as one graph on the device, so its whole time is
    booked as "tree"."""
    tables = _tables_for(tree)
    done = root in eos_ids or max_new_tokens == 1
    with jt.no_grad():
        tokens = None if done else _device_propose(model, heads, tree, tables, hidden_last,
                                                   jt.array(np.array([root], np.int32)))
        if tokens is not None:
            tokens.sync()
    yield [root], {"init": time.perf_counter() - start}
    emitted, depth = 1, tree.buffers.depth
    while not done:
        clock = time.perf_counter()
        with jt.no_grad():
            got, next_tokens = _device_advance(model, heads, cache, tree, tables, tokens, state)
        n = int(got[0])
        new = _clip([int(t) for t in got[1:n]] + [int(got[depth + 1])], eos_ids, max_new_tokens - emitted)
        emitted += len(new)
        done = new[-1] in eos_ids or emitted >= max_new_tokens
        tokens = next_tokens
        yield new, {"tree": time.perf_counter() - clock}


def medusa_generate(model, heads, prompt_ids, max_new_tokens, choices="8_node", eos_ids=(), sampling=None,
                    max_len=None) -> MedusaResult:
    """Medusa decoding to completion; see medusa_stream."""
    result = MedusaResult(output_ids=[])
    stream = medusa_stream(model, heads, prompt_ids, max_new_tokens, choices, eos_ids, sampling, max_len)
    for i, (new, stats) in enumerate(stream):
        result.output_ids.extend(new)
        if i > 0:
            result.accept_lengths.append(len(new))
        for name, seconds in stats.items():
            result.times[name] += seconds
    return result
