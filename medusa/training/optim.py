"""Optimizer and learning-rate schedule of the head trainer (medusa/training/trainer.py)."""
import math

from medusa.runtime.backend import jt


class AdamW(jt.optim.Optimizer):
    """AdamW with decoupled weight decay and bias correction counted in optimizer steps.

    jt.optim.AdamW adds the decay to the gradient (L2, not AdamW) and counts `backward` calls
    for the bias correction, which is wrong under gradient accumulation. Gradient accumulation,
    MPI all-reduce and clipping come from jt.optim.Optimizer unchanged.
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay, self.steps = betas, eps, weight_decay, 0
        pg = self.param_groups[0]
        pg["m"] = [jt.zeros(p.shape, "float32").stop_grad() for p in pg["params"]]
        pg["v"] = [jt.zeros(p.shape, "float32").stop_grad() for p in pg["params"]]

    def step(self, loss=None, retain_graph=False):
        self.pre_step(loss, retain_graph)
        self.steps += 1
        (b0, b1), lr, pg = self.betas, self.lr, self.param_groups[0]
        c0, c1 = 1 - b0 ** self.steps, 1 - b1 ** self.steps
        for p, g, m, v in zip(pg["params"], pg["grads"], pg["m"], pg["v"]):
            m.update(b0 * m + (1 - b0) * g)
            v.update(b1 * v + (1 - b1) * g * g)
            p.update(p * (1 - lr * self.weight_decay) - lr * (m / c0) / (jt.sqrt(v / c1) + self.eps))
        self.post_step()

    def state(self) -> dict:
        pg = self.param_groups[0]
        return {"steps": self.steps, "m": [m.numpy() for m in pg["m"]], "v": [v.numpy() for v in pg["v"]]}

    def load(self, state: dict):
        pg = self.param_groups[0]
        if len(state["m"]) != len(pg["m"]):
            raise ValueError(f"optimizer state has {len(state['m'])} tensors, the heads {len(pg['m'])}")
        self.steps = state["steps"]
        for dst, src in zip(pg["m"] + pg["v"], state["m"] + state["v"]):
            dst.assign(jt.array(src))


def lr_at(step, total, peak, warmup_ratio):
    """Linear warmup over warmup_ratio * total steps, then cosine decay to 0."""
    warmup = max(1, int(round(total * warmup_ratio))) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
