"""Draft-head families behind one interface, looked up by name in `HEAD_FAMILIES`.

References: Medusa (Cai et al. 2024, FasterDecoding/Medusa `medusa_model.py`: ResBlock heads
on the last hidden state), Hydra (Ankner et al. 2024: heads that read the tokens drafted so far),
Switch Transformer (Fedus et al. 2021: top-k routing and its load-balancing loss).

Every family is called the same way:

    logits, aux_loss = heads(hidden, tokens, lm_head_t, embed_weight)
    # hidden [B, T, H] final-normed base states; tokens [B, T, K] int32, tokens[..., k] is token
    # t+k+1; logits [K, B, T, V] fp32, head k predicts token t+k+2; aux_loss a scalar Var.

The base weights (`model.lm_head_t()` [H, V], `model.embed_weight()` [V, H]) are passed in at
call time, frozen, and are never parameters of the heads. Every Linear is the base model's
`model.Linear` (weight [in, out], y = x @ W, the same kernel choice as the base: `model.matmul`);
head_io.py keeps torch's [out, in] on disk. Parameter names follow one convention that head_io.py relies on:
per-head parameters live in top-level ModuleLists indexed by head (`blocks.{k}.{j}.linear.weight`,
`lm_heads.{k}.weight`), shared ones under a plain name (`cell.gates.weight`).
"""
import dataclasses
import math

import numpy as np

from medusa.model.transformer import Linear, RMSNorm, attention, matmul
from medusa.runtime.backend import jt
from medusa.runtime.errors import UsageError

HEAD_FAMILIES = {}


def register_family(name):
    def add(cls):
        cls.family = name
        HEAD_FAMILIES[name] = cls
        return cls
    return add


@dataclasses.dataclass
class HeadConfig:
    family: str = "medusa"        # a key of HEAD_FAMILIES
    num_heads: int = 4            # K: head k predicts token t+k+2
    num_layers: int = 1           # ResBlocks (moe: mixture layers) per head before the vocab projection
    hidden_size: int = 0          # H of the base model; must be set
    vocab_size: int = 0           # V of the base model; must be set
    share_lm_head: bool = False   # True: project with the base lm_head passed at call time
    moe_num_experts: int = 4      # E (moe only)
    moe_top_k: int = 2            # experts mixed per token (moe only); == E means soft routing
    vocab: str = ""               # the base's reduced vocabulary (ModelConfig.vocab_id); "" = full
    prefix_layer: bool = False    # Hydra++'s prefix attention: one decoder layer over the base states first
    prefix_heads: int = 0         # its attention heads (0: hidden_size / 64, at least 1)
    prefix_intermediate: int = 0  # its MLP width (0: hidden_size)

    def __post_init__(self):
        if self.family not in HEAD_FAMILIES:
            raise ValueError(f"unknown head family {self.family!r}; known: {sorted(HEAD_FAMILIES)}")
        for name in ("num_heads", "hidden_size", "vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HeadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise ValueError(f"HeadConfig.num_layers must be >= 0, got {self.num_layers}")
        if self.prefix_layer and self.hidden_size % self.attention_heads():
            raise ValueError(f"HeadConfig.prefix_heads={self.prefix_heads} must divide hidden_size={self.hidden_size}")
        if self.family == "moe" and not 2 <= self.moe_top_k <= self.moe_num_experts:
            raise ValueError(f"moe needs 2 <= moe_top_k <= moe_num_experts, got top_k={self.moe_top_k}, "
                             f"experts={self.moe_num_experts} (top-1 gives the router no gradient)")

    def attention_heads(self) -> int:
        """The prefix layer's attention heads."""
        return self.prefix_heads or max(1, self.hidden_size // 64)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown HeadConfig key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def build_heads(cfg: HeadConfig) -> "DraftHeads":
    """The DraftHeads module of family `cfg.family`, freshly initialised."""
    return HEAD_FAMILIES[cfg.family](cfg)


# ---------------------------------------------------------------- building blocks
def linear(n_in, n_out, bias=True, init_scale=1.0, bias_init=0.0) -> Linear:
    """A fp32 model.Linear initialised for training: W [in, out] ~ U(-a, a) with
    a = init_scale / sqrt(n_in) (torch's default at 1; 0 gives zeros), b = bias_init."""
    layer = Linear(n_in, n_out, bias=bias)
    a = init_scale / math.sqrt(n_in)
    if a:
        layer.weight = (jt.rand((n_in, n_out), "float32") * 2 - 1) * a
    if bias:
        layer.bias = jt.full((n_out,), bias_init, "float32")
    return layer


class ResBlock(jt.nn.Module):
    """x + SiLU(W x + b). With init_scale=0 (Medusa's choice) the block starts as the identity;
    W still gets gradient at once (dL/dW = silu'(0) g x^T = g x^T / 2)."""

    def __init__(self, hidden_size, init_scale=0.0):
        self.linear = linear(hidden_size, hidden_size, bias=True, init_scale=init_scale)

    def delta(self, x):
        return jt.nn.silu(self.linear(x))

    def execute(self, x):
        return x + self.delta(x)


def resblocks(hidden_size, num_layers, init_scale=0.0):
    return jt.nn.ModuleList([ResBlock(hidden_size, init_scale) for _ in range(num_layers)])


class PrefixLayer(jt.nn.Module):
    """Hydra++'s prefix attention (Ankner et al. 2024, section 4): one decoder layer over the base
    model's final hidden states whose output is what every head reads, so a head sees more of the
    context than the last position's state. Pre-norm causal self-attention and a SiLU-gated MLP,
    fp32, without a position encoding (the base states carry position). The attention and MLP
    output projections start at zero: at init the layer is the identity and the heads draft as
    without it, and the output projections get gradient from the first step.

    execute(h [B, T, H], past=None) -> (out [B, T, H], (keys, values) [B, heads, past + T, d]):
    `past` holds the keys and values of the positions before h (decoding reads the accepted
    positions a step at a time), None for a whole sequence (training)."""

    def __init__(self, hidden_size, num_heads, intermediate):
        H = hidden_size
        self.num_heads, self.head_dim = num_heads, H // num_heads
        self.attn_norm = RMSNorm(H, 1e-6)
        self.qkv = linear(H, 3 * H, bias=False)
        self.o = linear(H, H, bias=False, init_scale=0.0)
        self.mlp_norm = RMSNorm(H, 1e-6)
        self.gate_up = linear(H, 2 * intermediate, bias=False)
        self.down = linear(intermediate, H, bias=False, init_scale=0.0)

    def execute(self, h, past=None):
        B, T, H = h.shape
        nh, d = self.num_heads, self.head_dim
        qkv = self.qkv(self.attn_norm(h)).reshape(B, T, 3, nh, d).transpose(2, 0, 3, 1, 4)   # [3, B, nh, T, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        if past is not None:
            k, v = jt.concat([past[0], k], dim=2), jt.concat([past[1], v], dim=2)
        S = k.shape[2]
        visible = np.arange(S)[None, :] <= (S - T) + np.arange(T)[:, None]        # causal over past + new
        mask = jt.array(np.broadcast_to(np.where(visible, 0.0, -1e9).astype(np.float32), (B, 1, T, S)).copy())
        a = attention(q, k, v, mask, d ** -0.5).transpose(0, 2, 1, 3).reshape(B, T, H)
        h = h + self.o(a)
        gate, up = jt.chunk(self.gate_up(self.mlp_norm(h)), 2, dim=-1)
        return h + self.down(jt.nn.silu(gate) * up), (k, v)


# ---------------------------------------------------------------- the interface
class DraftHeads(jt.nn.Module):
    """Base of every family: owns the vocab projections (unless shared) and the call contract.

    Subclasses implement `features(h, tokens, embed_weight, wanted) -> ([K x [B, T, H]], aux_loss)`,
    where only the heads in `wanted` (a set of head indices) need their features (None elsewhere):
    decoding asks for the heads its tree uses, rnn heads for one depth at a time.
    """

    sequential = False  # True when head k reads tokens[..., k] (candidates go depth by depth)

    def __init__(self, cfg: HeadConfig):
        self.config = cfg
        H, V = cfg.hidden_size, cfg.vocab_size
        self.lm_heads = None if cfg.share_lm_head else jt.nn.ModuleList(
            [linear(H, V, bias=False) for _ in range(cfg.num_heads)])
        self.prefix = (PrefixLayer(H, cfg.attention_heads(), cfg.prefix_intermediate or H)
                       if cfg.prefix_layer else None)
        self._draft_vocab = None   # draft_vocab.DraftVocab (propose_from); "_": not a parameter

    @property
    def draft_vocab(self):
        """The tokens decoding drafts from (`propose_from`), None = the whole vocabulary."""
        return self._draft_vocab

    def propose_from(self, draft):
        """Draft only the tokens of `draft` (a draft_vocab.DraftVocab, None = all): decoding projects
        onto those columns of the base lm_head. Needs heads that share it (their own [H, V]
        projections were trained over every token)."""
        if draft is not None and not self.config.share_lm_head:
            raise UsageError(f"{draft.source}: a draft vocabulary needs heads that share the base lm_head "
                             "(these have their own vocab projections); run without --draft_vocab")
        self._draft_vocab = draft

    def execute(self, hidden, tokens=None, lm_head_t=None, embed_weight=None, project=None, prefixed=False):
        """-> (logits [len(project), B, T, V] fp32, aux). `project`: the heads whose vocab logits
        are wanted (default all, in order); logits[i] belongs to head project[i]. The vocab
        projection dominates the cost, so decoding asks only for the heads its tree uses.
        With a prefix layer, `hidden` is a whole sequence from position 0 that the layer reads
        causally, unless `prefixed` says it is the layer's output already (read_prefix)."""
        cfg = self.config
        if hidden.ndim != 3 or hidden.shape[-1] != cfg.hidden_size:
            raise ValueError(f"hidden must be [B, T, {cfg.hidden_size}], got {list(hidden.shape)}")
        if cfg.share_lm_head and lm_head_t is None:
            raise ValueError("share_lm_head=True: pass the base lm_head_t [H, V] (model.lm_head_t())")
        hidden = hidden.float32()
        if self.prefix is not None and not prefixed:
            hidden = self.prefix(hidden)[0]
        project = range(cfg.num_heads) if project is None else list(project)
        feats, aux = self.features(hidden, tokens, embed_weight, set(project))
        if self.lm_heads is None:  # one matmul for all wanted heads: the shared [H, V] is read once
            return _shared_projection(jt.stack([feats[k] for k in project], dim=0), lm_head_t), aux
        return jt.stack([self.lm_heads[k](feats[k]) for k in project], dim=0), aux  # [K', B, T, V]

    def init_from_base(self, lm_head_t):
        """Copy the base vocab projection [H, V] (`model.lm_head_t()`) into every own vocab
        projection (no-op when shared)."""
        if self.lm_heads is None:
            return self
        w = jt.array(lm_head_t).float32() if not isinstance(lm_head_t, jt.Var) else lm_head_t.float32()
        expected = (self.config.hidden_size, self.config.vocab_size)
        if tuple(w.shape) != expected:
            raise ValueError(f"lm_head_t has shape {tuple(w.shape)}, expected {expected} ([H, V])")
        for head in self.lm_heads:
            head.weight.assign(w.detach())
        return self

    def prefix_state(self):
        """Decoding state of the prefix layer (its keys and values so far), None without one."""
        return None if self.prefix is None else {"past": None}

    def read_prefix(self, state, hidden_new):
        """The input the heads draft from after the base cached hidden_new [1, n, H] (its final
        states of the positions just added): the last of them, or with a prefix layer its output
        there, after it read all n (state from prefix_state(), advanced) -> [1, 1, H]."""
        if state is None:
            return hidden_new[:, -1:]
        out, state["past"] = self.prefix(hidden_new.float32(), state["past"])
        return out[:, -1:]

    def read_prefix_row(self, state, states, last):
        """read_prefix without knowing on the host how many states are real (decoding's device
        loop): the prefix layer reads all of states [1, m, H] (an accepted path, padded past its
        end with repeats: causal, so padding never reaches a real row) and the output at row
        `last` (jt int [1]) is returned [1, 1, H]. keep_prefix(state, n) then drops the padding's
        keys and values once the path's length n is known. Heads with a prefix layer only."""
        out, past = self.prefix(states.float32(), state["past"])
        state["pending"] = past, past[0].shape[2] - states.shape[1]
        return out[:, last].reshape(1, 1, -1)

    def keep_prefix(self, state, n: int):
        """After read_prefix_row: keep the keys and values of the first n states it read."""
        (keys, values), before = state.pop("pending")
        state["past"] = keys[:, :, :before + n], values[:, :, :before + n]

    def num_parameters(self) -> int:
        """Trainable parameters of the heads (the shared base weights are not counted)."""
        return sum(math.prod(p.shape) for p in self.parameters())

    def features(self, h, tokens, embed_weight, wanted):
        raise NotImplementedError


def _shared_projection(feats, lm_head_t):
    """feats [K', B, T, H] fp32 @ the base's lm_head_t [H, V] -> fp32 logits.

    Without gradients (decoding) the product is taken in the base's own dtype, as the base
    computes its logits: casting an fp16 [H, V] to fp32 on every step costs more than the
    matmul (2.2 ms per step for Vicuna-7B's 32000 x 4096 on an H100). With gradients (training)
    it stays fp32, detached: the heads never mark the caller's Var. Without gradients the Var
    itself is used (no graph is built), so the CPU kernel finds its packed copy (cached by Var id)."""
    if not jt.flags.no_grad:
        return matmul(feats, lm_head_t.detach().float32())
    if lm_head_t.dtype != feats.dtype:
        return matmul(feats.cast(lm_head_t.dtype), lm_head_t).float32()
    return matmul(feats, lm_head_t)


def _zero_aux():
    return jt.zeros((1,), "float32")


# ---------------------------------------------------------------- medusa
@register_family("medusa")
class MedusaHeads(DraftHeads):
    """Medusa-1: head k = num_layers zero-initialised ResBlocks on the hidden state, then a vocab
    projection. At init (own projection copied from the base) every head predicts like lm_head."""

    def __init__(self, cfg: HeadConfig):
        super().__init__(cfg)
        self.blocks = jt.nn.ModuleList(
            [resblocks(cfg.hidden_size, cfg.num_layers) for _ in range(cfg.num_heads)])

    def features(self, h, tokens, embed_weight, wanted):
        feats = []
        for k, layers in enumerate(self.blocks):
            x = h if k in wanted else None
            for block in layers if k in wanted else ():
                x = block(x)
            feats.append(x)
        return feats, _zero_aux()


# ---------------------------------------------------------------- rnn
class GatedCell(jt.nn.Module):
    """GRU-like update of the draft state s [.., H] with the embedding e [.., H] of one token.

        x = P e;  z, r = sigmoid(G [s; x]);  n = C [x; r * s];  s' = z * s + (1 - z) * n

    The candidate n is linear (no tanh): s lives on the scale of the base model's final-normed
    states, which the vocab projection expects, and tanh would squash it. The update-gate bias
    starts at +2 (z ~ 0.88) so s' stays close to s; every weight is random (not zero), so every
    parameter has a gradient from the first step.
    """

    def __init__(self, hidden_size, keep_bias=2.0):
        H = hidden_size
        self.hidden_size = H
        self.in_proj = linear(H, H)
        self.gates = linear(2 * H, 2 * H)
        self.gates.bias = jt.concat([jt.full((H,), keep_bias, "float32"), jt.zeros((H,), "float32")])
        self.cand = linear(2 * H, H)

    def execute(self, s, e):
        H = self.hidden_size
        x = self.in_proj(e)
        g = jt.sigmoid(self.gates(jt.concat([s, x], dim=-1)))  # [B, T, 2H]
        z, r = g[..., :H], g[..., H:]
        n = self.cand(jt.concat([x, r * s], dim=-1))
        return z * s + (1 - z) * n


@register_family("rnn")
class RNNHeads(DraftHeads):
    """Recurrent heads (Hydra-style): s_0 = hidden, s_{k+1} = cell(s_k, embed(tokens[..., k])),
    head k reads out lm(ResBlocks_k(s_{k+1})), so it depends on tokens[..., :k+1] only.

    One cell is shared by all depths: "append the next token to the draft state" is the same
    operation at every depth, sharing lets each depth's data train it (K times the examples of a
    per-depth cell) and keeps the size independent of K. Depth-specific behaviour lives in the
    per-head readout ResBlocks and vocab projections.
    """

    sequential = True

    def __init__(self, cfg: HeadConfig):
        super().__init__(cfg)
        self.cell = GatedCell(cfg.hidden_size)
        self.blocks = jt.nn.ModuleList(
            [resblocks(cfg.hidden_size, cfg.num_layers) for _ in range(cfg.num_heads)])

    def features(self, h, tokens, embed_weight, wanted):
        """The cell runs up to the deepest wanted head (head k needs steps 0..k), the readout
        blocks of the wanted heads only; the embedding rows are gathered before the fp32 cast
        (casting the whole [V, H] matrix cost more than the cell)."""
        K = self.config.num_heads
        if tokens is None or embed_weight is None:
            raise ValueError("rnn heads read the drafted tokens: pass tokens [B, T, K] and embed_weight [V, H]")
        if tuple(tokens.shape) != (*h.shape[:2], K):
            raise ValueError(f"tokens must be [B, T, K] = {[*h.shape[:2], K]}, got {list(tokens.shape)}")
        emb = embed_weight.detach()
        s, feats = h, [None] * K
        for k in range(max(wanted) + 1 if wanted else 0):
            s = self.cell(s, emb[tokens[:, :, k]].float32())
            if k in wanted:
                x = s
                for block in self.blocks[k]:
                    x = block(x)
                feats[k] = x
        return feats, _zero_aux()


# ---------------------------------------------------------------- moe
def route(probs, top_k):
    """Top-k routing: (weights, mask), both [.., E]. Weights are the router probabilities of the
    k best experts renormalised to sum to 1 (soft routing when top_k == E); gradient flows into
    the router through the kept probabilities, the selection mask is a constant."""
    E = probs.shape[-1]
    if top_k >= E:
        return probs, jt.ones(probs.shape, "float32").stop_grad()
    kth = jt.topk(probs, top_k, dim=-1)[0][..., top_k - 1:top_k]
    mask = (probs >= kth).float32().stop_grad()
    kept = probs * mask
    return kept / kept.sum(-1, keepdims=True), mask


class MoEBlock(jt.nn.Module):
    """x + sum_e w_e(x) SiLU(W_e x + b_e) over the top-k of E expert ResBlocks.

    Experts start small and random (not zero): zero experts would give the router no gradient
    (dL/dw_e = g . delta_e = 0) and identical experts could never specialise. All experts are
    computed densely (E is small; the [H, V] vocab projection dominates the cost anyway).
    """

    def __init__(self, hidden_size, num_experts, top_k, expert_init_scale=0.1):
        self.top_k = top_k
        self.experts = jt.nn.ModuleList([ResBlock(hidden_size, expert_init_scale) for _ in range(num_experts)])
        self.router = linear(hidden_size, num_experts, bias=False)

    def execute(self, x):
        """-> (y [B, T, H], Switch load-balancing loss E * sum_e f_e * p_e, 1 when balanced)."""
        E = len(self.experts)
        probs = jt.nn.softmax(self.router(x), dim=-1)                     # [B, T, E]
        weights, mask = route(probs, self.top_k)
        deltas = jt.stack([expert.delta(x) for expert in self.experts], dim=-2)  # [B, T, E, H]
        y = x + (weights.unsqueeze(-1) * deltas).sum(-2)
        f = mask.reshape(-1, E).mean(0) / self.top_k   # fraction of assignments per expert
        p = probs.reshape(-1, E).mean(0)               # mean router probability per expert
        return y, E * (f * p).sum()


@register_family("moe")
class MoEHeads(DraftHeads):
    """Medusa heads whose ResBlocks are mixtures of experts, one router per head and layer.

    Experts are per head, not shared: shared experts with per-head routers would leave heads that
    share the base lm_head only K routing vectors apart. aux_loss is the load-balancing loss
    averaged over all K * num_layers mixtures (unscaled: the trainer picks its coefficient).
    """

    def __init__(self, cfg: HeadConfig):
        super().__init__(cfg)
        H, E, k = cfg.hidden_size, cfg.moe_num_experts, cfg.moe_top_k
        self.blocks = jt.nn.ModuleList(
            [jt.nn.ModuleList([MoEBlock(H, E, k) for _ in range(cfg.num_layers)])
             for _ in range(cfg.num_heads)])

    def features(self, h, tokens, embed_weight, wanted):
        feats, aux = [], []
        for k, layers in enumerate(self.blocks):
            x = h if k in wanted else None
            for block in layers if k in wanted else ():
                x, a = block(x)
                aux.append(a)
            feats.append(x)
        return feats, (sum(aux) / len(aux) if aux else _zero_aux())
