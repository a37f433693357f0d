"""The Medusa steps, each a function, as the paper (Cai et al. 2024) and FasterDecoding/Medusa's
medusa/model/utils.py (generate_candidates, tree_decoding, evaluate_posterior,
update_inference_inputs) name them. One step reads:

    tokens       = propose(...)              # root token + per-depth top-k of the heads
    hidden, sc   = tree_decode(...)          # base model on all N tree nodes, KV cache
    path, bonus  = evaluate_posterior(...)   # accepted node ids (root first), next token
    accepted     = update_inputs(...)        # keep exactly the accepted path in the cache
    hidden_last  = heads.read_prefix(...)    # what the heads draft from (heads/families.py)

State between steps: the cache holds every token before the root; the root (last emitted
token) is not cached yet and is node 0 of the next tree. `hidden_last` [1, 1, H] is the base
state whose logits chose the root; head k on it proposes the nodes at depth k + 1. Heads with a
prefix layer (Hydra++) read every newly cached position's state first (their own small cache)
and draft from the layer's output at the last one.

Host/device traffic per step: the heads' top-k indices (one transfer per tree depth for
sequential heads) and the tree's argmax (+ two small float vectors for typical). Sample mode
also reads the logits rows of the nodes it visits; on the CPU a leaf's logits are computed only
when the accepted path ends there (see tree_decode). The acceptance rules are in acceptance.py;
loop.py runs these steps (through stepper.HostStepper) or device_loop.py's one-graph step.
"""
from dataclasses import dataclass

import numpy as np

from medusa.decoding import acceptance, core
from medusa.decoding.tree_vars import Scoring
from medusa.runtime.backend import jt


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
    token = acceptance.next_token(lambda: model.vocab.tokens(jt.argmax(logits, 0)[0].item()),
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
    top = tokens_of(topk_indices(logits[:, 0, 0], max(buf.topk)).numpy())          # [depth, kmax] token ids
    flat = np.concatenate([[root], top.reshape(-1)[buf.candidate_slots]])          # [1 + sum(topk)]
    return flat[buf.tree_indices].astype(np.int64)


def _propose_sequential(model, heads, tree, hidden_last, root):
    """Heads that read the drafted tokens (rnn): depth by depth, head d runs once per node at
    depth d, fed that node's root-to-node tokens, and its top-k become the node's children."""
    buf, K = tree.buffers, heads.config.num_heads
    weight, tokens_of = head_projection(model, heads)
    tokens = np.zeros(tree.num_nodes, dtype=np.int64)
    tokens[0] = root
    for d in range(buf.depth):
        parents = [n for n in buf.nodes_at_depth[d] if buf.children[n]]
        drafted = np.zeros((1, len(parents), K), dtype=np.int32)   # tokens t+1..t+d+1, 0-padded
        for i, p in enumerate(parents):
            drafted[0, i, :d + 1] = model.vocab.embedding_rows(tokens[list(buf.ancestry[p])])
        hidden = hidden_last.broadcast((1, len(parents), hidden_last.shape[-1]))
        logits, _ = heads(hidden, jt.array(drafted), weight, model.embed_weight(), project=[d], prefixed=True)
        top = tokens_of(topk_indices(logits[0, 0], buf.topk[d]).numpy())            # [parents, topk[d]]
        for i, p in enumerate(parents):
            for c in buf.children[p]:
                tokens[c] = top[i, buf.rank[c]]
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


def evaluate_posterior(tree, tokens, scores, sampling, rng):
    """-> (accepted node ids, root first; the bonus token from the last accepted node)."""
    buf, kind = tree.buffers, sampling.kind
    if kind == "sample":
        return acceptance.speculative_walk(buf, tokens, scores, sampling, rng)
    if kind == "greedy":
        path = acceptance.best_path(buf, acceptance.greedy_ok(buf, tokens, scores.argmax))
    else:
        ok = acceptance.typical_ok(buf, scores.cand_logp, scores.entropy, sampling)
        path = acceptance.best_path(buf, ok, scores.cand_logp)
    last = path[-1]
    return path, acceptance.next_token(lambda: scores.top(last), lambda: scores.row(last), sampling, rng,
                                       scores.model.vocab)


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
