"""The batches and the loss of head training: a micro-batch as the flat rows the heads see, the
per-head losses and accuracies, the base model's distribution as a teacher, and their sums.

Only the positions where some head has a target (the assistant tokens, see data.head_targets)
are fed to the heads, as one flat row list: the [rows, H] x [H, V] vocab projections dominate the
cost and every family is position-wise, so the prompt and padding positions would be waste.

Loss (--loss): `hard` is Medusa's cross-entropy to the data's next tokens (FasterDecoding/Medusa
`train_legacy.py`: loss = sum_k lambda^k CE_k, head k at position t learns token t+k+2); `soft`
is Hydra++'s teacher loss, the cross-entropy to the base model's whole distribution at the same
position (softmax of the base lm_head on the base hidden state that predicts that token), which
also teaches the heads the base's second and third choices, what a tree's other branches need.
Both report the same validation metrics (hard CE, top-1, top-5), so runs compare directly.
"""
import numpy as np

from medusa.data import samples as data
from medusa.model.transformer import matmul
from medusa.runtime.backend import jt


def labels(ids, loss_mask, num_heads, vocab=None):
    """Head targets as logit rows [K, B, T] and their validity: data.head_targets, mapped through
    a reduced vocabulary (model/transformer.py's VocabMap, an orig2draft map) with the targets outside it
    masked out."""
    targets, valid = data.head_targets(ids, loss_mask, num_heads)
    if vocab is None or not vocab.reduced:
        return targets, valid
    rows = vocab.rows(targets)
    return np.maximum(rows, 0).astype(targets.dtype), valid & (rows >= 0)


def count_targets(samples, num_heads, vocab=None):
    """Head targets per head [K] in `samples` (what the loss of their batch is normalised by)."""
    return sum(labels(s.input_ids[None], s.loss_mask[None], num_heads, vocab)[1].sum((1, 2)) for s in samples)


def targets_outside_vocab(samples, num_heads, vocab) -> int:
    """Head targets a reduced vocabulary cannot express (masked out of the loss)."""
    if not vocab.reduced:
        return 0
    return int(sum(data.head_targets(s.input_ids[None], s.loss_mask[None], num_heads)[1].sum()
                   - labels(s.input_ids[None], s.loss_mask[None], num_heads, vocab)[1].sum()
                   for s in samples))


def padded_states(hiddens):
    """Per-sample base states [T_i, H] (or one jt.Var [B, T, H]) -> jt.Var [B, T, H] fp32,
    right-padded with zeros as data.collate pads the ids (causal layers never read the pads)."""
    if isinstance(hiddens, jt.Var):
        return hiddens.float32()
    T = max(len(x) for x in hiddens)
    out = np.zeros((len(hiddens), T, hiddens[0].shape[-1]), np.float32)
    for b, x in enumerate(hiddens):
        out[b, :len(x)] = x
    return jt.array(out)


def flat_rows(samples, hiddens, num_heads, pad_id, vocab=None):
    """One micro-batch as the flat rows the heads see.

    hiddens: per-sample [T_i, H] arrays (or one jt.Var [B, T, H]). Returns (hidden [1, N, H],
    drafted tokens [1, N, K] (tokens[..., k] = token t+k+1, what rnn heads read, as embedding
    rows), targets [K, N] (logit rows), valid [K, N]) over the N positions where at least one
    head has a target, and where those rows are: (batch rows bi [N], positions ti [N]).
    """
    batch = data.collate(samples, pad_id)
    ids = batch["input_ids"]
    targets, valid = labels(ids, batch["loss_mask"], num_heads, vocab)
    bi, ti = np.nonzero(valid.any(0))
    B = ids.shape[0]
    drafted = data.drafted_tokens(ids, bi, ti, num_heads, pad_id)
    if vocab is not None and vocab.sliced:
        drafted = np.maximum(vocab.embedding_rows(drafted), 0).astype(drafted.dtype)
    if isinstance(hiddens, jt.Var):
        h = hiddens[jt.array(bi.astype(np.int32)), jt.array(ti.astype(np.int32))]
    else:
        h = jt.array(np.concatenate([hiddens[b][ti[bi == b]] for b in range(B)]).astype(np.float32))
    return h.float32().unsqueeze(0), jt.array(drafted[None]), targets[:, bi, ti], valid[:, bi, ti], (bi, ti)


def head_losses(logits, targets, valid, teacher=None):
    """Per-head sums over the valid rows: (nll [K] Var, top1 [K], top5 [K] numpy, soft [K] Var).

    logits [K, N, V] fp32, targets / valid [K, N] numpy; teacher [K, N, V] fp32 probabilities
    (the base model's) or None. nll is the hard cross-entropy; soft = -sum_v teacher_v log p_v
    (None without a teacher)."""
    K, N, V = logits.shape
    flat = logits.reshape(K * N, V)
    target_logit = flat[jt.arange(K * N), jt.array(targets.reshape(-1).astype(np.int32))].reshape(K, N)
    top = logits.max(-1, keepdims=True).detach()                                 # jt.nn.logsumexp overflows
    lse = (logits - top).exp().sum(-1).log() + top.squeeze(-1)                   # [K, N]
    nll = lse - target_logit
    w = jt.array(valid.astype(np.float32))
    # rank of the target = how many logits beat it (ties count for the target)
    rank = (logits.detach() > target_logit.detach().unsqueeze(-1)).int32().sum(-1).numpy()
    hit1 = ((rank < 1) * valid).sum(-1)
    hit5 = ((rank < 5) * valid).sum(-1)
    soft = None if teacher is None else ((lse - (teacher * logits).sum(-1)) * w).sum(-1)
    return (nll * w).sum(-1), hit1, hit5, soft


def teacher_positions(bi, ti, valid):
    """Where the base predicts each head target: head k's row n (sample bi[n], position ti[n])
    targets token t+k+2, which the base lm_head predicts from its hidden state at t+k+1.
    Returns (rows, positions) of the M distinct such states and index [K, N] into them
    (0 where the target is invalid)."""
    K, N = valid.shape
    pos = ti[None, :] + 1 + np.arange(K)[:, None]                       # [K, N]
    key = np.where(valid > 0, bi[None, :].astype(np.int64) * (1 << 32) + pos, -1)
    uniq, inverse = np.unique(key[key >= 0], return_inverse=True)
    index = np.zeros((K, N), np.int64)
    index[key >= 0] = inverse
    return (uniq >> 32).astype(np.int64), (uniq & ((1 << 32) - 1)).astype(np.int64), index


def teacher_probs(model, hiddens, bi, ti, valid):
    """The base model's next-token distribution [K, N, V] fp32 for every head target (no gradient),
    from the same hidden states the heads read."""
    rows, positions, index = teacher_positions(bi, ti, valid)
    if isinstance(hiddens, jt.Var):
        h = hiddens[jt.array(rows.astype(np.int32)), jt.array(positions.astype(np.int32))]
    else:
        h = jt.array(np.stack([hiddens[b][p] for b, p in zip(rows, positions)]).astype(np.float32))
    with jt.no_grad():
        probs = jt.nn.softmax(matmul(h.float32(), model.lm_head_t().float32()), dim=-1)   # [M, V]
        K, N = index.shape
        return probs[jt.array(index.reshape(-1).astype(np.int32))].reshape(K, N, -1).stop_grad()


class Totals:
    """Per-head sums of loss, top-1, top-5 and target counts (all-reduced across ranks)."""

    def __init__(self, K):
        self.sums = np.zeros((4, K))
        self.aux, self.steps = 0.0, 0   # MoE balance loss summed over `steps` optimizer steps

    def add(self, nll, hit1, hit5, count):
        self.sums += np.stack([nll, hit1, hit5, count])

    def reduced(self):
        sums = self.sums
        if jt.in_mpi:
            sums = jt.array(sums.astype(np.float32)).mpi_all_reduce("add").numpy().astype(np.float64)
        return sums

    def metrics(self, lambdas):
        nll, hit1, hit5, count = self.reduced()
        n = np.maximum(count, 1)
        out = {"loss": float((lambdas * nll / n).sum()), "tokens": int(count[0])}
        for k in range(len(n)):
            out.update({f"head{k}_loss": float(nll[k] / n[k]), f"head{k}_top1": float(hit1[k] / n[k]),
                        f"head{k}_top5": float(hit5[k] / n[k])})
        return out
