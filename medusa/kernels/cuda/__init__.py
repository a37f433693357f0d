"""Fused CUDA kernels for the GPU decode step, each beside its plain-Jittor reference.

Why: at batch 1 a Jittor step is host-bound. Every Python-level Jittor op costs host time to
build, schedule and allocate, and one decoder layer written with plain ops is ~45 of them (the
norms' casts and reductions, rotate_half's slices and concat, the transposes, the softmax
pieces). Fused q/k/v and gate/up weights (model.fuse_projections) and these kernels make it six:

    h, y = norm_gemv(x, delta, norm_w, eps, w)        # residual add + RMSNorm + one-row projection
    q = qkv_rope_into_cache(qkv, cos, sin, positions, keys, values, start, nq, nkv, d)
                                                      # split, RoPE, K/V written into the cache
    o = cache_attention(q, keys, values, length, mask, scale)  # softmax(q k^T s + mask) v over
                                                      # the first `length` cache positions
    y = gemv(x, w)                                    # one row @ [K, N] (o_proj, lm_head)
    y = silu_gemv(gate_up, w)                         # SiLU(gate) * up + the down projection

and `decode_layer` launches those six from ONE op (a jt.code source may launch several kernels;
they keep their order on the stream), so Jittor's cost per op is paid once a layer. For 2-64
rows (a tree) the pieces are rms_norm / add_rms_norm, mma_rows (tensor cores, small weights;
cuBLAS otherwise), qkv_rope, cache_attention with the tree mask and silu_mul; `rows_layer` is
their layer op. `compact_cache` moves a Medusa step's accepted path in every layer's cache at
once. Host-side launchers in the kernel sources (`launch_*`) are shared by the single ops and
the layer ops, so both give bit-identical results.

`jt.code` kernels are keyed on dtypes and ranks, not shapes (Jittor's code_op.cc), and the
lengths they read come through `data`, so a growing cache never recompiles them. The
`reference_*` functions (model.attention for cache_attention, Jittor's matmul for gemv)
compute the same with Jittor's ops: they are the path everywhere else and what tests/test_gpu.py
compares against on the device. `model.gpu_kernels_ok` and the `*_ok` functions say when a
kernel applies (CUDA, no gradient, the shapes it was written for). Switches: use_kernels,
use_gemv, use_layer_op, use_rows_layer, use_mma, use_tree_attention, exact_mode (runtime options: $MEDUSA_*
for each).

Reference: the kernels of gpt-fast / vLLM-style decoding (one block per row for the norm, one
block per query row for attention over the cache, a thread per key position).
"""
# one module per kernel family (common <- elementwise <- gemv; attention, compact, mma; layers
# composes them); the model and the tests use this package's names
from medusa.kernels.cuda.attention import MAX_ATTENTION_KEYS, MAX_HEAD_DIM, cache_attention, cache_attention_ok
from medusa.kernels.cuda.compact import (MAX_COMPACT_BUFFERS, MAX_COMPACT_KEEP, compact_cache, compact_cache_at,
                                         compact_ok)
from medusa.kernels.cuda.elementwise import (add_rms_norm, qkv_rope, qkv_rope_into_cache, reference_add_rms_norm,
                                             reference_qkv_rope, reference_rms_norm, reference_silu_mul, rms_norm,
                                             rotate_half, silu_mul)
from medusa.kernels.cuda.gemv import (MAX_NORM_GEMV_K, gemv, gemv_ok, gemv_rows_ok, norm_gemv, norm_gemv_ok,
                                      reference_norm_gemv, reference_silu_gemv, silu_gemv, silu_gemv_ok)
from medusa.kernels.cuda.layers import decode_layer, decode_layer_ok, rows_layer, rows_layer_ok
from medusa.kernels.cuda.mma import MMA_MAX_ROWS, MMA_MAX_WEIGHT, mma_rows, mma_rows_ok, mma_workspace
from medusa.kernels.cuda.switches import (exact_mode, use_gemv, use_kernels, use_layer_op, use_mma,
                                          use_rows_layer, use_tree_attention)

__all__ = ["MAX_ATTENTION_KEYS", "MAX_HEAD_DIM", "cache_attention", "cache_attention_ok",
           "MAX_COMPACT_BUFFERS", "MAX_COMPACT_KEEP", "compact_cache", "compact_cache_at", "compact_ok",
           "add_rms_norm", "qkv_rope", "qkv_rope_into_cache", "reference_add_rms_norm", "reference_qkv_rope",
           "reference_rms_norm", "reference_silu_mul", "rms_norm", "rotate_half", "silu_mul",
           "MAX_NORM_GEMV_K", "gemv", "gemv_ok", "gemv_rows_ok", "norm_gemv", "norm_gemv_ok", "reference_norm_gemv",
           "reference_silu_gemv", "silu_gemv", "silu_gemv_ok", "decode_layer", "decode_layer_ok", "rows_layer",
           "rows_layer_ok", "MMA_MAX_ROWS", "MMA_MAX_WEIGHT", "mma_rows", "mma_rows_ok", "mma_workspace", "exact_mode", "use_gemv",
           "use_kernels", "use_layer_op", "use_mma", "use_rows_layer", "use_tree_attention"]
