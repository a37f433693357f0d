"""How tokens are chosen, one object for plain and Medusa decoding, and the host-side math.

`Sampling` is what every decoder receives: plain decoding (core.py) reads temperature, top_p and
seed; Medusa (loop.py) also reads the acceptance mode. temperature 0 means greedy in both,
so the benchmark's two sides always decode the same way.
"""
from dataclasses import dataclass

import numpy as np

MODES = ("greedy", "typical", "sample")


@dataclass
class Sampling:
    """How candidates are accepted and tokens chosen (see acceptance.py's module docstring)."""
    mode: str = "greedy"        # "greedy" (lossless), "typical", "sample" (speculative sampling)
    temperature: float = 0.0    # 0 = greedy whatever the mode
    top_p: float = 1.0          # plain sampling and sample mode
    posterior_threshold: float = 0.09   # typical: Medusa's epsilon
    posterior_alpha: float = 0.3        # typical: Medusa's delta (sqrt of epsilon in the paper)
    root: str = "argmax"        # typical: bonus token by "argmax" (fast) or "sample"
    seed: int = 0
    # greedy on a reduced-vocabulary model that holds the full head (model.has_full_head): check
    # the tokens against the full vocabulary every `vocab_check` tokens and redo from the first
    # wrong one, so the output is the full model's (0 = off: the reduced model's own argmax)
    vocab_check: int = 32

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Sampling.mode must be one of {MODES}, got {self.mode!r}")
        if self.root not in ("argmax", "sample"):
            raise ValueError(f"Sampling.root must be 'argmax' or 'sample', got {self.root!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.vocab_check < 0:
            raise ValueError(f"vocab_check must be >= 0 (0 = off), got {self.vocab_check}")

    @property
    def kind(self) -> str:
        """The acceptance rule actually used: temperature 0 means greedy."""
        return "greedy" if self.temperature <= 0 else self.mode

    def check_every(self, model) -> int:
        """Tokens between full-vocabulary checks for this model (0: no check: sampling, a full
        vocabulary, or a reduced model without the full head)."""
        return self.vocab_check if self.temperature <= 0 and model.has_full_head else 0


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


def choose_token(logits, sampling: Sampling, rng) -> int:
    """logits [V] -> token id: argmax at temperature 0, else temperature + top-p sampling."""
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    probs = top_p_filter(softmax(logits, sampling.temperature), sampling.top_p)
    return int(rng.choice(len(probs), p=probs))
