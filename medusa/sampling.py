"""Choosing a token from fp32 logits on the host: greedy, temperature, top-p."""
import numpy as np


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / max(temperature, 1e-6)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_p_filter(probs, top_p):
    """Zero all but the smallest set of most likely tokens whose mass reaches top_p; renormalise."""
    if top_p >= 1.0:
        return probs
    order = np.argsort(-probs)
    keep_sorted = np.cumsum(probs[order]) - probs[order] < top_p   # always keeps the first
    filtered = np.zeros_like(probs)
    filtered[order[keep_sorted]] = probs[order[keep_sorted]]
    return filtered / filtered.sum()


def choose_token(logits, greedy=True, temperature=1.0, top_p=1.0, rng=None):
    """logits [V] -> token id."""
    if greedy or temperature <= 0:
        return int(np.argmax(logits))
    probs = top_p_filter(softmax(logits, temperature), top_p)
    return int(rng.choice(len(probs), p=probs))
