"""Which drafted tokens are accepted, and the next token where no draft is tried: host-side numpy
over one step's per-node scores (steps.evaluate_posterior picks the rule by Sampling.kind).

- greedy:  a node is accepted when its token is the argmax of its parent's base logits; the
  output equals plain greedy decoding (lossless).
- typical: Medusa's typical acceptance (Cai et al. 2024, 3.3.1), p(token) > min(threshold,
  alpha * exp(-entropy)) of the parent's temperature-scaled distribution; longest accepted
  path, ties broken by likelihood; the bonus token is the argmax (root="argmax", Medusa's fast
  variant) or sampled from the typical set (root="sample").
- sample:  speculative sampling over the tree (SpecInfer-style, drafts are deterministic): at
  each node the children are tried in rank order, child x is accepted with probability r(x)
  where r is the residual distribution (temperature + top-p filtered base distribution with
  rejected siblings removed and renormalised); when all children fail the bonus token is drawn
  from r. The tokens are distributed exactly as plain sampling with the same settings.
With temperature <= 0, typical and sample behave like greedy (Sampling.kind).

Reference: FasterDecoding/Medusa, medusa/model/utils.py (evaluate_posterior,
get_typical_one_token). No Jittor here: `scores` is anything with row(node) -> fp64 logits and
model.vocab (steps.TreeScores on a real step).
"""
import numpy as np

from medusa.decoding.sampling import softmax, top_p_filter


def filtered_probs(row, sampling):
    """Temperature + top-p filtered distribution of one logits row (fp64)."""
    return top_p_filter(softmax(row, sampling.temperature), sampling.top_p)


def typical_threshold(entropy, sampling):
    """min(epsilon, delta * exp(-H)), H the entropy as Medusa computes it (log(p + 1e-5))."""
    return np.minimum(sampling.posterior_threshold, sampling.posterior_alpha * np.exp(-entropy))


def typical_sample(row, sampling, rng):
    """Sample from the tokens whose probability passes the typical threshold (Medusa's
    get_typical_one_token)."""
    p = softmax(row, sampling.temperature)
    entropy = -np.sum(p * np.log(p + 1e-5))
    keep = p >= typical_threshold(entropy, sampling)
    keep[np.argmax(p)] = True                # a threshold above every p would leave nothing
    p = np.where(keep, p, 0.0)
    return int(rng.choice(len(p), p=p / p.sum()))


def next_token(top_of, row_of, sampling, rng, vocab):
    """The next token at a node where no candidate is tried: argmax, typical or plain sample.
    top_of() / row_of(): that node's argmax token / fp64 logits row, fetched only when needed;
    vocab (model.transformer.VocabMap) turns a sampled logit row index into its token id."""
    kind = sampling.kind
    if kind == "greedy" or (kind == "typical" and sampling.root == "argmax"):
        return int(top_of())
    if kind == "typical":
        return int(vocab.tokens(typical_sample(row_of(), sampling, rng)))
    p = filtered_probs(row_of(), sampling)
    return int(vocab.tokens(rng.choice(len(p), p=p)))


def best_path(buf, ok, score=None):
    """Longest root-to-node run of accepted nodes (ok [N] bool) over the leaf paths of buf
    (TreeBuffers; padding never counts); ties go to the highest summed `score`, else the first.
    -> node ids, root first."""
    rows = buf.path_rows
    accepted = ok[rows] & buf.valid_mask
    accepted[:, 0] = True
    lengths = np.cumprod(accepted, axis=1).sum(axis=1)
    best = np.flatnonzero(lengths == lengths.max())
    if score is not None and len(best) > 1:
        best = best[np.argmax([score[rows[b, 1:lengths[b]]].sum() for b in best])]
    else:
        best = best[0]
    return [int(n) for n in rows[best, :lengths[best]]]


def greedy_ok(buf, tokens, argmax):
    """[N] bool: each node's token is its parent's argmax (the root always)."""
    return np.concatenate([[True], tokens[1:] == argmax[buf.parent[1:]]])


def typical_ok(buf, cand_logp, entropy, sampling):
    """[N] bool: each node's log p(token | parent) passes its parent's typical threshold."""
    with np.errstate(divide="ignore"):      # threshold 0 -> log 0 = -inf: accept everything
        log_threshold = np.log(typical_threshold(entropy, sampling))
    return np.concatenate([[True], cand_logp[1:] > log_threshold[buf.parent[1:]]])


def speculative_walk(buf, tokens, scores, sampling, rng):
    """Sample mode: try the children of each reached node in rank order (see the module
    docstring) -> (accepted node ids, root first; the bonus token)."""
    node, path, vocab = 0, [0], scores.model.vocab
    r = filtered_probs(scores.row(0), sampling)          # over logit rows (== token ids unless reduced)
    while True:
        for child in buf.children[node]:
            x = int(vocab.rows(tokens[child]))
            if rng.random() < r[x]:
                node = child
                path.append(child)
                r = filtered_probs(scores.row(child), sampling)
                break
            r[x] = 0.0
            r /= r.sum()
        else:
            return path, int(vocab.tokens(rng.choice(len(r), p=r)))
