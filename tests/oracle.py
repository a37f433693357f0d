"""Draft heads for the decoding tests on CPU and GPU: seeded random heads, and fake heads that know
the base model's greedy continuation."""
import numpy as np

from medusa.heads.families import DraftHeads, HeadConfig, build_heads
from medusa.model.transformer import build_mask
from medusa.runtime.backend import jt


def random_heads(model, family, share=False, num_heads=4):
    """Seeded heads of `family` for the model, own vocab projections copied from its lm_head."""
    jt.set_global_seed(0)
    cfg = HeadConfig(family=family, num_heads=num_heads, hidden_size=model.config.hidden_size,
                     vocab_size=model.config.vocab_size, share_lm_head=share)
    return build_heads(cfg).init_from_base(model.lm_head_t())


class OracleHeads:
    """Fake heads that know the model's greedy continuation `ref` (prompt + new tokens).

    The position is found as the reference hidden state nearest to the given one; head k puts
    the true token t+k+2 at rank `rank` (rank 1: a wrong token first). Sequential oracles also
    check the drafted tokens they are fed and propose garbage for a wrong path."""

    def __init__(self, model, ref, rank=0, sequential=False, num_heads=4):
        self.config = HeadConfig(num_heads=num_heads, hidden_size=model.config.hidden_size,
                                 vocab_size=model.config.vocab_size)
        self.ref, self.rank, self.sequential = list(ref), rank, sequential
        T = len(ref)
        tokens = jt.array(np.asarray(ref, dtype=np.int32)[None])
        positions = jt.array(np.arange(T, dtype=np.int32)[None])
        self.states = model(tokens, positions, build_mask(1, T)).numpy()[0]   # [T, H]
        self.calls = 0

    prefix = None                          # no prefix layer: the DraftHeads methods that say so
    prefix_state = DraftHeads.prefix_state
    read_prefix = DraftHeads.read_prefix

    def __call__(self, hidden, tokens, lm_head_t, embed_weight, project=None, prefixed=False):
        self.calls += 1
        h = hidden.numpy()[0]                                                  # [T, H]
        drafted = None if tokens is None else tokens.numpy()[0]
        K, V = self.config.num_heads, self.config.vocab_size
        out = np.zeros((K, 1, h.shape[0], V), np.float32)
        for t, state in enumerate(h):
            i = int(np.argmin(((self.states - state) ** 2).sum(-1)))
            for k in range(K):
                target = self.ref[i + k + 2] if i + k + 2 < len(self.ref) else 0
                if self.sequential and list(drafted[t, :k + 1]) != self.ref[i + 1:i + k + 2]:
                    target = (target + 7) % V  # wrong path fed: propose a wrong token
                out[k, 0, t, (target + 1) % V] = 9.0 if self.rank == 1 else 1.0
                out[k, 0, t, target] = 10.0 if self.rank == 0 else 5.0
        project = range(K) if project is None else list(project)
        return jt.array(out[list(project)]), jt.zeros((1,))
