"""Llama / Qwen2 / Qwen3 decoder in Jittor, one file driven by `ModelConfig` flags.

References: transformers' modeling_llama.py, modular_qwen2.py, modular_qwen3.py (the behaviour we
match logit for logit in tests/test_model.py), and gpt-fast's model.py (the shape of this file).

The model knows nothing about speculation. One position-indexed call serves prefill, decode,
tree verification and training:

    hidden = model(tokens, positions, mask, cache)   # [B, T, H], final-normed
    logits = model.logits(hidden)                   # [B, T, V], fp32

Module names mirror the Hugging Face ones (model.layers.0.self_attn.q_proj.weight, ...), so a
converted checkpoint loads with an identity key map.
"""
import math

import numpy as np

from medusa.kernels import cpu as kernels
from medusa.kernels import cuda as cuda_kernels
from medusa.model.config import ModelConfig, rope_inv_freq
from medusa.runtime.backend import jt

NEG_INF = -1e9  # additive mask value; scores are accumulated in fp32, so this never overflows


# Jittor's own loop fuses a matmul with the ops around it, which wins where the product is small:
# one token against a small weight (a SmolLM2 decode step was ~10% slower with a BLAS call per
# layer; the [576, 49152] vocab projection is 2x faster on BLAS). Attention: with
# kernels.blas_matmul for q k^T and p v a SmolLM2 8_node step took 101 vs 87 ms and mc_sim_7b_63
# 329 vs 315 ms (3 runs each, loaded 2-core CPU); kernels.fused_attention (one pass per query row)
# took mc_sim_7b_63 from 200 to 186 ms on a quiet machine, so inference uses it (fused_attention_ok).
BLAS_MIN_ONE_ROW = 1 << 22     # weight elements from which a single row goes to BLAS


def matmul_kernel(a, b, trans_b):
    """The function that computes matmul(a, b, trans_b): Jittor's own, one of medusa/kernels/cpu.py
    (CPU), cuda_kernels.gemv (one row on a GPU) or cuda_kernels.mma_rows (2-64 rows in fp16 on
    a GPU: a tree's projections)."""
    if jt.flags.use_cuda:
        if cuda_kernels.gemv_ok(a, b, trans_b):
            return cuda_kernels.gemv
        return cuda_kernels.mma_rows if cuda_kernels.mma_rows_ok(a, b, trans_b) else kernels.reference_matmul
    if a.dtype != "float32" or b.dtype != "float32" or not kernels.use_blas():
        return kernels.reference_matmul
    if trans_b or b.ndim > 2:                      # attention: one product per (batch, kv head)
        return kernels.reference_matmul
    rows = math.prod(a.shape[:-1])
    frozen = jt.flags.no_grad or b.is_stop_grad()  # the few-rows kernel gives b no gradient
    if 1 < rows <= kernels.SMALL_ROWS and frozen and b.shape[1] % kernels.PACK_WIDTH == 0:
        return kernels.small_rows_matmul           # a tree or the heads: stream the weight once
    if rows == 1 and math.prod(b.shape) < BLAS_MIN_ONE_ROW:
        return kernels.reference_matmul
    return kernels.blas_matmul


def fused_attention_ok(q, mask) -> bool:
    """Attention runs as kernels.fused_attention (one op instead of Jittor's six loops) on the
    CPU, in fp32, without gradients, with a mask, while the BLAS kernels are on."""
    return (not jt.flags.use_cuda and jt.flags.no_grad and mask is not None and q.dtype == "float32"
            and kernels.use_blas())


def matmul(a, b, trans_b=False):
    """a [..., M, K] @ b -> [..., M, N], the one place that picks the kernel. b [K, N] is a weight
    (a's leading axes are rows), b [..., K, N] one matrix per leading index of a (attention);
    trans_b: b is given as [..., N, K]. On the CPU in fp32, OpenBLAS or a few-rows kernel
    (medusa/kernels/cpu.py: Jittor's own CPU matmul is a single-threaded loop) where they win; else
    Jittor's own ops (always on a GPU, in fp16, or after kernels.use_blas(False))."""
    return matmul_kernel(a, b, trans_b)(a, b, trans_b)


class Linear(jt.nn.Module):
    """y = x W (+ b) with W stored [in, out], the transpose of the checkpoint's [out, in]
    (weights.py transposes on load): Jittor's own matmul is ~6x slower on a transposed
    operand (x @ W^T), measured on [1,576]x[576,1536]. Zero-initialised: weights come from a
    checkpoint (the heads initialise their own, heads.linear)."""

    transposed = True   # weights.transposed_names: stored [in, out], saved as [out, in]

    def __init__(self, n_in, n_out, bias=False, dtype="float32"):
        self.weight = jt.zeros((n_in, n_out), dtype)
        self.bias = jt.zeros((n_out,), dtype) if bias else None

    def execute(self, x):
        y = matmul(x, self.weight)
        return y + self.bias if self.bias is not None else y


class Embedding(jt.nn.Module):
    def __init__(self, n_vocab, dim, dtype="float32"):
        self.weight = jt.zeros((n_vocab, dim), dtype)

    def execute(self, tokens):
        return self.weight[tokens]


class RMSNorm(jt.nn.Module):
    def __init__(self, dim, eps, dtype="float32"):
        self.weight = jt.ones((dim,), dtype)
        self.eps = eps

    def execute(self, x):
        if gpu_kernels_ok():
            return cuda_kernels.rms_norm(x, self.weight, self.eps)
        return cuda_kernels.reference_rms_norm(x, self.weight, self.eps)


def gpu_kernels_ok() -> bool:
    """The fused CUDA kernels (medusa/kernels/cuda/) serve inference on a GPU; they have no
    gradient, so anything that trains through the base keeps Jittor's ops."""
    return bool(jt.flags.use_cuda and jt.flags.no_grad and cuda_kernels.use_kernels())


rotate_half = cuda_kernels.rotate_half


def _fused_weight(linears):
    """One [in, sum of outs] weight (and bias) of Linear layers that read the same input."""
    weight = jt.concat([m.weight for m in linears], dim=1).stop_grad()
    bias = None if linears[0].bias is None else jt.concat([m.bias for m in linears]).stop_grad()
    return weight, bias


class Attention(jt.nn.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        h, d = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.q_proj = Linear(h, self.n_heads * d, cfg.attention_bias, dtype)
        self.k_proj = Linear(h, self.n_kv * d, cfg.attention_bias, dtype)
        self.v_proj = Linear(h, self.n_kv * d, cfg.attention_bias, dtype)
        self.o_proj = Linear(self.n_heads * d, h, cfg.o_bias, dtype)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self._qkv = None                                  # (weight, bias) after fuse()

    def fuse(self):
        """q/k/v as one projection (the three weights are dropped). Not with Qwen3's q/k norm,
        which sits between the projection and RoPE."""
        if self.q_norm is None:
            self._qkv = _fused_weight([self.q_proj, self.k_proj, self.v_proj])
            self.q_proj = self.k_proj = self.v_proj = None

    def execute(self, x, rope, mask, cache, layer):
        if self._qkv is not None:
            weight, bias = self._qkv
            qkv = matmul(x, weight)
            return self.attend(qkv if bias is None else qkv + bias, rope, mask, cache, layer)
        cos, sin = rope.rows()
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).reshape(B, T, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(0, 2, 1, 3)                       # [B, Hq, T, D]
        k = k.transpose(0, 2, 1, 3)                       # [B, Hkv, T, D]
        v = v.transpose(0, 2, 1, 3)
        q = q * cos + rotate_half(q) * sin                # cos/sin: [B, 1, T, D]
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(layer, k, v)              # [B, Hkv, S, D]
        G = self.n_heads // self.n_kv
        # grouped-query attention: fold the G query heads of each kv head into the row axis
        out = attention(q.reshape(B, self.n_kv, G * T, self.head_dim), k, v, mask, self.head_dim ** -0.5)
        out = out.reshape(B, self.n_heads, T, self.head_dim)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, self.n_heads * self.head_dim))

    def attend(self, qkv, rope, mask, cache, layer):
        """The fused layer after its q/k/v projection qkv [B, T, (nq + 2 nkv) d]: split + RoPE
        (writing k and v into the cache), attention over the cache's buffers (tokens-major
        output, ready for o_proj), o_proj. On a GPU three ops (cuda_kernels.qkv_rope_into_cache,
        cache_attention, gemv); elsewhere their Jittor references."""
        B, T, _ = qkv.shape
        nq, nkv, d = self.n_heads, self.n_kv, self.head_dim
        cos, sin, positions = rope.cos_table, rope.sin_table, rope.positions
        fast = gpu_kernels_ok()
        length = T if cache is None else cache.length + T
        if fast and cache is not None and cuda_kernels.cache_attention_ok(qkv.dtype, d, length):
            keys, values = cache.buffers(layer)
            q = cuda_kernels.qkv_rope_into_cache(qkv, cos, sin, positions, keys, values, cache.length, nq, nkv, d)
            return self.o_proj(cuda_kernels.cache_attention(q, keys, values, length, mask, d ** -0.5,
                                                            tokens_major=True))
        split = cuda_kernels.qkv_rope if fast else cuda_kernels.reference_qkv_rope
        q, k, v = split(qkv, cos, sin, positions, nq, nkv, d)
        keys, values = (k, v) if cache is None else cache.write(layer, k, v)[:2]
        q = q.reshape(B, nkv, (nq // nkv) * T, d)
        if fast and cuda_kernels.cache_attention_ok(qkv.dtype, d, length):
            out = cuda_kernels.cache_attention(q, keys, values, length, mask, d ** -0.5, tokens_major=True)
        else:
            out = attention(q, keys[:, :, :length], values[:, :, :length], mask, d ** -0.5)
            out = out.reshape(B, nq, T, d).transpose(0, 2, 1, 3)
        return self.o_proj(out.reshape(B, T, nq * d))


def attention(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v: q [B, Hkv, G*T, D] (the G query heads of each kv head
    folded into rows, head-major), k, v [B, Hkv, S, D], mask additive [B, 1, T, S] or None
    -> [B, Hkv, G*T, D]. One fused op on the CPU at inference (fused_attention_ok), else Jittor's
    ops, scores and softmax in fp32."""
    B, H, R, D = q.shape
    S = k.shape[2]
    if fused_attention_ok(q, mask):
        return kernels.fused_attention(q, k, v, mask.reshape(B, mask.shape[-2], S), scale)
    # q k^T with k transposed in place (on CUDA jt.nn.bmm_transpose, one cuBLAS call): Jittor's
    # transpose kernel copies the cached keys at a few GB/s (9.7 ms per Vicuna-7B step at 133
    # positions, H100)
    scores = matmul(q, k, trans_b=True).float32() * scale
    if mask is not None:
        T = mask.shape[-2]
        scores = (scores.reshape(B, H, R // T, T, S) + mask.reshape(B, 1, 1, T, S)).reshape(B, H, R, S)
    # softmax written out: Jittor's CUDA softmax compiles a new kernel for many new lengths S
    # (5-16 s each with nvcc 13), and S grows every decode step
    scores = (scores - scores.max(dim=-1, keepdims=True)).exp()
    probs = (scores / scores.sum(dim=-1, keepdims=True)).cast(v.dtype)
    return matmul(probs, v)


class MLP(jt.nn.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, False, dtype)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, False, dtype)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, False, dtype)
        self._gate_up = None                              # weight after fuse()

    def fuse(self):
        """gate/up as one projection (the two weights are dropped)."""
        self._gate_up = _fused_weight([self.gate_proj, self.up_proj])[0]
        self.gate_proj = self.up_proj = None

    def execute(self, x):
        if self._gate_up is None:
            return self.down_proj(jt.nn.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down(matmul(x, self._gate_up))

    def down(self, gate_up):
        """down_proj(SiLU(gate) * up) of the fused gate/up output: one kernel for one row on a GPU
        (cuda_kernels.silu_gemv), else SiLU * up (fused on a GPU) and the projection."""
        if not gpu_kernels_ok():
            return self.down_proj(cuda_kernels.reference_silu_mul(gate_up))
        if cuda_kernels.silu_gemv_ok(gate_up, self.down_proj.weight):
            return cuda_kernels.silu_gemv(gate_up, self.down_proj.weight)
        return self.down_proj(cuda_kernels.silu_mul(gate_up))


class DecoderLayer(jt.nn.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        self.self_attn = Attention(cfg, dtype)
        self.mlp = MLP(cfg, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)

    def execute(self, x, rope, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))

    def execute_pending(self, x, pending, rope, mask, cache, layer):
        """The GPU form of execute: the residual stream x with `pending` (the previous layer's
        MLP output, None before the first layer) not yet added -> (x, this layer's MLP output).
        Each residual add runs inside the norm after it, and each norm inside the projection
        after it where that is one row (norm_matmul); a decode step's layer is then six kernels,
        launched from one op (cuda_kernels.decode_layer) where the layer allows, and a tree's layer
        of a small model is one op too (cuda_kernels.rows_layer)."""
        attn, mlp = self.self_attn, self.mlp
        if attn._qkv is not None and mlp._gate_up is not None and attn.o_proj.bias is None:
            weights = attn._qkv[0], attn.o_proj.weight, mlp._gate_up, mlp.down_proj.weight
            args = (self.input_layernorm.weight, *attn._qkv, rope.cos_table, rope.sin_table, rope.positions)
            tail = (self.input_layernorm.eps, attn.head_dim ** -0.5)
            rest = (attn.o_proj.weight, self.post_attention_layernorm.weight, mlp._gate_up, mlp.down_proj.weight)
            exact, d = cuda_kernels.exact_mode(), attn.head_dim
            # one token: decode_layer, or in the exact option's `tree` mode the tree's rows_layer;
            # a tree (or a short prompt): rows_layer, or in `decode` mode decode_layer over its rows
            if mask is None and exact == "tree" and cuda_kernels.rows_layer_ok(x, cache, None, weights, d):
                return cuda_kernels.rows_layer(x, pending, *args, *cache.buffers(layer), cache.length, None,
                                               *rest, *tail)
            if mask is None and cuda_kernels.decode_layer_ok(x, cache, d):
                return cuda_kernels.decode_layer(x, pending, *args, *cache.buffers(layer), cache.length, *rest, *tail)
            if mask is not None and exact == "decode" and cuda_kernels.decode_layer_ok(x, cache, d, mask, weights):
                return cuda_kernels.decode_layer(x, pending, *args, *cache.buffers(layer), cache.length, *rest, *tail,
                                                 mask=mask)
            if mask is not None and cuda_kernels.rows_layer_ok(x, cache, mask, weights, d):
                return cuda_kernels.rows_layer(x, pending, *args, *cache.buffers(layer), cache.length, mask,
                                               *rest, *tail)
        if attn._qkv is not None:
            x, qkv = norm_matmul(x, pending, self.input_layernorm, *attn._qkv)
            out = attn.attend(qkv, rope, mask, cache, layer)
        else:
            x, h = norm_matmul(x, pending, self.input_layernorm)
            out = attn(h, rope, mask, cache, layer)
        if mlp._gate_up is not None:
            x, gate_up = norm_matmul(x, out, self.post_attention_layernorm, mlp._gate_up)
            return x, mlp.down(gate_up)
        x, h = norm_matmul(x, out, self.post_attention_layernorm)
        return x, mlp(h)


def norm_matmul(x, delta, norm, weight=None, bias=None):
    """(h, RMSNorm(h) @ weight + bias) with h = x + delta (x when delta is None): a residual add,
    the norm after it and the projection that reads it (no weight: the normed h itself). On a GPU
    at inference one row with a weight is one kernel (cuda_kernels.norm_gemv), else the add and
    the norm are one (add_rms_norm) and the matmul another; elsewhere the references."""
    fast = gpu_kernels_ok()
    if fast and weight is not None and cuda_kernels.norm_gemv_ok(x, weight):
        return cuda_kernels.norm_gemv(x, delta, norm.weight, norm.eps, weight, bias)
    if delta is None:
        h = norm(x)
    else:
        add_norm = cuda_kernels.add_rms_norm if fast else cuda_kernels.reference_add_rms_norm
        x, h = add_norm(x, delta, norm.weight, norm.eps)
    if weight is None:
        return x, h
    y = matmul(h, weight)
    return x, (y if bias is None else y + bias)


class Rope:
    """RoPE for one forward call: the model's tables and the positions; `rows()` gathers the
    [B, 1, T, D] cos/sin the unfused layers multiply with (once per call, shared by the layers)."""

    def __init__(self, model, positions):
        self.model, self.positions, self._rows = model, positions, None

    @property
    def cos_table(self):
        return self.model._cos32

    @property
    def sin_table(self):
        return self.model._sin32

    def rows(self):
        if self._rows is None:
            m = self.model
            self._rows = m._cos[self.positions].unsqueeze(1), m._sin[self.positions].unsqueeze(1)
        return self._rows


class Backbone(jt.nn.Module):
    """Named like transformers' `LlamaModel` so checkpoint keys start with `model.`."""

    def __init__(self, cfg: ModelConfig, dtype):
        self.embed_tokens = Embedding(cfg.embedding_rows, cfg.hidden_size, dtype)
        self.layers = jt.nn.ModuleList([DecoderLayer(cfg, dtype) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class Transformer(jt.nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: str = "float32", max_positions: int = None):
        self.config, self.dtype = cfg, dtype
        self.model = Backbone(cfg, dtype)
        own_head = not cfg.tie_word_embeddings or cfg.kept_ids is not None   # a sliced head is its own
        self.lm_head = Linear(cfg.hidden_size, cfg.output_size, False, dtype) if own_head else None
        self._tied_lm_t = self._full_lm_t = None
        self.fused = False
        self.vocab = VocabMap(cfg)
        # RoPE tables [P, D] cover the positions asked for so far, grown on demand (see rope_rows);
        # the context limit itself is the config's max_position_embeddings, checked by core.py
        self._inv_freq = np.asarray(rope_inv_freq(cfg), dtype=np.float64)
        self._cos = self._sin = None
        self.rope_rows(max_positions or min(cfg.max_position_embeddings, 4096))

    def rope_rows(self, n: int) -> int:
        """Make the RoPE tables cover positions [0, n) (grown to a power of two, so a growing
        cache rebuilds them a few times at most); returns the rows they hold."""
        have = 0 if self._cos is None else self._cos.shape[0]
        if n > have:
            rows = 1 << max(int(n - 1).bit_length(), 4)
            angles = np.outer(np.arange(rows), self._inv_freq)                      # [P, D/2]
            angles = np.concatenate([angles, angles], axis=-1)
            # underscore names: tables, not parameters
            self._cos32 = jt.array(np.cos(angles).astype(np.float32)).stop_grad()   # the fused path's
            self._sin32 = jt.array(np.sin(angles).astype(np.float32)).stop_grad()
            self._cos = self._cos32.cast(self.dtype).stop_grad()
            self._sin = self._sin32.cast(self.dtype).stop_grad()
            have = rows
        return have

    def fuse_projections(self):
        """Fused q/k/v and gate/up weights in every layer (the GPU's path: two matmuls fewer per
        layer and one op each for split + RoPE, attention and SiLU * up; medusa/kernels/cuda/).
        The separate weights are dropped, so do this after loading; checkpoints keep their names."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        self.fused = True
        return self

    def embed(self, tokens):
        """Token embeddings [B, T, H] in the compute dtype of original token ids [B, T]."""
        if self.config.embedding_sliced:
            tokens = self.vocab.row_table()[tokens]     # ids outside are refused before (core.check_tokens)
        return self.model.embed_tokens(tokens)

    def lm_head_t(self):
        """The vocab projection as [H, V] (logits = hidden @ it). With tied embeddings this is a
        transposed copy of the embedding matrix, made once after loading (see Linear)."""
        if self.lm_head is not None:
            return self.lm_head.weight
        if self._tied_lm_t is None:
            self._tied_lm_t = self.model.embed_tokens.weight.transpose(1, 0).clone().stop_grad()
        return self._tied_lm_t

    def embed_weight(self):
        """The token embedding matrix [V, H]."""
        return self.model.embed_tokens.weight

    def logits(self, hidden):
        """hidden [B, T, H] -> fp32 logits [B, T, V]. Under the exact option (exact_mode) each
        row through the kernel a one-token step uses, however many rows there are."""
        weight, exact = self.lm_head_t(), self.exact_mode()
        if exact != "off" and math.prod(hidden.shape[:-1]) <= cuda_kernels.MMA_MAX_ROWS:
            if exact == "decode" and cuda_kernels.gemv_rows_ok(hidden, weight):
                return cuda_kernels.gemv(hidden, weight).float32()
            if exact == "tree" and cuda_kernels.mma_rows_ok(hidden, weight, exact=True):
                return cuda_kernels.mma_rows(hidden, weight).float32()
        return matmul(hidden, weight).float32()

    def exact_mode(self) -> str:
        """The exact option ($MEDUSA_EXACT: decode, tree, off) where it applies to this model: the
        fused kernels on a GPU and a small model (every layer weight one mma_rows takes, whose
        layers have one-op forms for a token and for a tree); "off" elsewhere."""
        if not (self.fused and gpu_kernels_ok()):
            return "off"
        first = self.model.layers[0]
        if first.self_attn._qkv is None or first.mlp._gate_up is None:
            return "off"
        weights = (first.self_attn._qkv[0], first.self_attn.o_proj.weight, first.mlp._gate_up,
                   first.mlp.down_proj.weight)
        mode = cuda_kernels.exact_mode()
        small = all(w.shape[0] * w.shape[1] <= cuda_kernels.MMA_MAX_WEIGHT for w in weights)
        layer_ops = cuda_kernels.use_layer_op() and cuda_kernels.use_gemv() and first.self_attn.o_proj.bias is None
        V = self.lm_head_t().shape[1]
        if mode == "decode":
            fits = V % 8 == 0
        else:       # the tree's kernels: fp16 tensor cores
            fits = (self.dtype == "float16" and cuda_kernels.use_rows_layer() and cuda_kernels.use_mma()
                    and V % 16 == 0)
        # (trees of more than MMA_MAX_ROWS nodes and contexts past MAX_ATTENTION_KEYS leave it too)
        return mode if small and layer_ops and fits else "off"

    @property
    def has_full_head(self) -> bool:
        """A reduced model that still holds the full lm_head (its whole embedding, sliced from a
        tied model): its greedy tokens can be checked against the full vocabulary."""
        return self.vocab.reduced and self.config.embedding_is_full_head

    def full_argmax(self, hidden):
        """hidden [n, H] -> [n] int64 original ids: the full vocabulary's argmax, what the model
        before slicing picks (has_full_head only). One [n, H] x [H, V] product: checking n tokens
        at once streams the full head once."""
        if self._full_lm_t is None:
            self._full_lm_t = self.model.embed_tokens.weight.transpose(1, 0).clone().stop_grad()
        logits = matmul(hidden, self._full_lm_t).float32()
        return jt.argmax(logits, -1)[0].numpy().astype(np.int64).reshape(-1)

    def execute(self, tokens, positions, mask=None, cache=None):
        """tokens, positions: int32 [B, T]; mask: additive fp32 [B, 1, T, S] or None (attend to
        everything: right for one new token); S = cache.length + T with a cache, else T.
        Returns the final-normed hidden states [B, T, H]."""
        T = tokens.shape[1]
        if cache is not None:
            cache.check_room(T)
        # positions never exceed the cache's slots (or T without a cache): the tables must hold them
        self.rope_rows(cache.max_len if cache is not None else T)
        rope = Rope(self, positions)
        x = self.embed(tokens)
        if gpu_kernels_ok():
            x = self._layers_fused_norms(x, rope, mask, cache)
        else:
            for i, layer in enumerate(self.model.layers):
                x = layer(x, rope, mask, cache, i)
            x = self.model.norm(x)
        if cache is not None:
            cache.advance(T)
        return x

    def _layers_fused_norms(self, x, rope, mask, cache):
        """The layers in their GPU form (DecoderLayer.execute_pending): every residual add fused
        into the norm after it, the last one into the final norm. Returns the final-normed states."""
        pending = None
        for i, layer in enumerate(self.model.layers):
            x, pending = layer.execute_pending(x, pending, rope, mask, cache, i)
        return norm_matmul(x, pending, self.model.norm)[1]


class VocabMap:
    """Token ids <-> rows of a reduced vocabulary (identity for the full one). Logits index the
    lm_head's rows; everything that leaves the model (tokens, drafts) is an original id."""

    def __init__(self, cfg: ModelConfig):
        self.kept = None if cfg.kept_ids is None else np.asarray(cfg.kept_ids, dtype=np.int64)
        self.sliced = cfg.embedding_sliced
        self.row = None
        if self.kept is not None:
            self.row = np.full(cfg.vocab_size, -1, dtype=np.int64)
            self.row[self.kept] = np.arange(len(self.kept))
        self._row_var = None

    @property
    def reduced(self) -> bool:
        return self.kept is not None

    def tokens(self, rows):
        """Logit rows (argmax, top-k, sampled index) -> original token ids, same shape."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows if self.kept is None else self.kept[rows]

    def rows(self, tokens):
        """Original token ids -> logit rows, -1 where a token is outside the vocabulary."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return tokens if self.row is None else self.row[tokens]

    def embedding_rows(self, tokens):
        """Original ids -> rows of the embedding matrix (rnn heads read it with drafted tokens)."""
        return self.rows(tokens) if self.sliced else np.asarray(tokens, dtype=np.int64)

    def row_table(self):
        """jt int32 [V]: the embedding row of every original id (0 where dropped)."""
        if self._row_var is None:
            self._row_var = jt.array(np.maximum(self.row, 0).astype(np.int32)).stop_grad()
        return self._row_var


def build_mask(batch: int, new_len: int, past_len: int = 0, padding=None, tree=None):
    """Additive attention mask [B, 1, new_len, past_len + new_len] (fp32 jt.Var).

    New token i sees every cached position and new tokens 0..i (causal); `tree` [new_len, new_len]
    (bool) replaces that causal block for tree verification; `padding` [B, past_len + new_len]
    (1 = real token, 0 = padding) hides padded keys.
    """
    S = past_len + new_len
    allowed = np.ones((batch, 1, new_len, S), dtype=bool)
    block = np.tril(np.ones((new_len, new_len), dtype=bool)) if tree is None else np.asarray(tree, bool)
    if block.shape != (new_len, new_len):
        raise ValueError(f"tree mask shape {block.shape} != ({new_len}, {new_len})")
    allowed[:, :, :, past_len:] = block
    if padding is not None:
        padding = np.asarray(padding).astype(bool)
        if padding.shape != (batch, S):
            raise ValueError(f"padding mask shape {padding.shape} != ({batch}, {S})")
        allowed &= padding[:, None, None, :]
    return jt.array(np.where(allowed, 0.0, NEG_INF).astype(np.float32))
