"""A whole decoder layer in one Jittor op: decode_layer (one token), rows_layer (2-64 rows)."""
import math

from medusa.kernels.cuda.attention import _ATTENTION_BODY, cache_attention_ok
from medusa.kernels.cuda.common import _COMMON
from medusa.kernels.cuda.elementwise import _QKV_ROPE_BODY, _RMS_NORM_BODY, _SILU_MUL_BODY
from medusa.kernels.cuda.gemv import _GEMV_BODY, MAX_NORM_GEMV_K
from medusa.kernels.cuda.mma import _MMA_BODY, MMA_MAX_ROWS, MMA_MAX_WEIGHT, mma_rows_ok, mma_workspace
from medusa.kernels.cuda.switches import use_gemv, use_kernels, use_layer_op, use_rows_layer
from medusa.runtime.backend import jt

# the sizes both layer ops read from their operands' shapes and `data`
_PREAMBLE = """
        const int Nqkv = {qkv_w1}, NQD = {o_w0}, I = {down_w0};
        const int nkv = {keys1}, L = {keys2}, D = {keys3}, nq = NQD / D, start = (int)data["start"];
        const float eps = (float)data["eps"], scale = (float)data["scale"];
"""


def _layer_code(operands, out_shapes, out_dtypes, header, body, start, eps, scale):
    """The jt.code op of a layer: `operands` (name -> var, None = absent) become the inputs;
    `body(p, shape)` writes the launches, with p[name] the input pointer and shape(name, i) its
    extent i; the preamble above names the sizes every launch uses."""
    names = [n for n, v in operands.items() if v is not None]
    p = {n: f"in{i}_p" for i, n in enumerate(names)}
    shape = lambda n, i: f"in{names.index(n)}_shape{i}"
    preamble = _PREAMBLE.format(qkv_w1=shape("qkv_w", 1), o_w0=shape("o_w", 0), down_w0=shape("down_w", 0),
                                keys1=shape("keys", 1), keys2=shape("keys", 2), keys3=shape("keys", 3))
    return jt.code(out_shapes, out_dtypes, [operands[n] for n in names], cuda_header=header,
                   data={"start": int(start), "eps": float(eps), "scale": float(scale)},
                   cuda_src=preamble + body(p, shape))


# ---------------------------------------------------------------- a whole decoder layer, one token
_LAYER_HEADER = _COMMON + _GEMV_BODY + _QKV_ROPE_BODY + _ATTENTION_BODY


def decode_layer_ok(x, cache, head_dim, mask=None, weights=()) -> bool:
    """decode_layer serves x: one token (batch 1) over a cache, with the shapes its kernels take
    (norm_gemv_ok, cache_attention_ok); or, with a mask (the exact option's `decode` mode), 1 to
    MMA_MAX_ROWS rows of a small model (every weight one mma_rows would take), each computed as
    the one-token step computes it. The layer itself must have fused projections, no q/k norm
    and no o_proj bias (the caller knows)."""
    H, rows = x.shape[-1], math.prod(x.shape[:-1])
    if mask is None:
        fits = rows == 1
    else:
        fits = (x.ndim == 3 and x.shape[0] == 1 and 1 <= rows <= MMA_MAX_ROWS
                and all(w.shape[0] * w.shape[1] <= MMA_MAX_WEIGHT for w in weights))
    return (cache is not None and fits and use_kernels() and use_gemv() and use_layer_op()
            and bool(jt.flags.use_cuda and jt.flags.no_grad) and H <= MAX_NORM_GEMV_K and H % 8 == 0
            and cache_attention_ok(x.dtype, head_dim, cache.length + rows))


def decode_layer(x, pending, in_norm, qkv_weight, qkv_bias, cos, sin, positions, keys, values, start,
                 o_weight, post_norm, gate_up_weight, down_weight, eps, scale, mask=None):
    """One decoder layer for one token in ONE Jittor op: the six kernels of the decode path
    (norm_gemv for q/k/v, qkv_rope into the cache, cache_attention, gemv for o_proj, norm_gemv for
    gate/up, silu_gemv for down) launched back to back from one jt.code op on one stream. Jittor's
    cost per op (building, scheduling, allocating its outputs) is paid once per layer instead of
    six times; the launches keep their order on the stream, so each kernel reads what the one
    before wrote. x [1, 1, H]: the residual stream with `pending` (the last layer's MLP output,
    None before the first layer) not yet added; keys/values [1, nkv, L, d]: the cache's buffers,
    the new position written at `start` -> (x + pending + attention, this layer's MLP output),
    the same pair as model.DecoderLayer.execute_pending. With a mask [1, 1, T, start + T], x
    holds T rows (a tree): the same kernels over T rows, each row's arithmetic that of a lone
    token (gemv's rows, cache_attention's logical key order), so the same bits."""
    T, H, nqd = math.prod(x.shape[:-1]), x.shape[-1], o_weight.shape[0]
    nqkv, inter = qkv_weight.shape[1], down_weight.shape[0]
    operands = {"x": x, "pending": pending, "in_norm": in_norm, "qkv_w": qkv_weight, "qkv_b": qkv_bias,
                "cos": cos, "sin": sin, "pos": positions, "keys": keys, "values": values,
                "mask": None if mask is None else mask.reshape(1, T, -1), "o_w": o_weight,
                "post_norm": post_norm, "gate_up_w": gate_up_weight, "down_w": down_weight}
    null = "(in0_type*)nullptr"
    # qkv | q | attention | o_proj | x + pending | gate_up, each T rows
    scratch = T * (nqkv + 2 * nqd + 2 * H + 2 * inter)
    body = lambda p, shape: f"""
        typedef in0_type T;
        const int H = {shape("x", x.ndim - 1)}, Tn = {shape("x", x.ndim - 2) if x.ndim > 1 else 1}, S = start + Tn;
        T* qkv = out2_p; T* q = qkv + Tn * Nqkv; T* attn = q + Tn * NQD; T* o = attn + Tn * NQD; T* x1 = o + Tn * H;
        T* gu = x1 + Tn * H;
        const T* residual = {"x1" if pending is not None else p["x"]};
        medusa_k::launch_gemv<T, medusa_k::NORM>({p["x"]}, {p.get("pending", null)}, {p["in_norm"]}, {p["qkv_w"]},
            {p.get("qkv_b", null)}, qkv, {"x1" if pending is not None else null}, H, Nqkv, eps, Tn);
        medusa_k::launch_qkv_rope<T>(qkv, {p["cos"]}, {p["sin"]}, {p["pos"]}, q, {p["keys"]}, {p["values"]},
                                     1, Tn, nq, nkv, D, L, start);
        medusa_k::launch_cache_attention<T>(q, {p["keys"]}, {p["values"]}, {p.get("mask", "(const float*)nullptr")},
                                            attn, nq * Tn, nkv, (nq / nkv) * Tn, L, D, S, Tn, scale, 1, nullptr);
        medusa_k::launch_gemv<T, medusa_k::PLAIN>(attn, {null}, {null}, {p["o_w"]}, {null}, o, {null}, NQD, H, 0.0f, Tn);
        medusa_k::launch_gemv<T, medusa_k::NORM>(residual, o, {p["post_norm"]}, {p["gate_up_w"]}, {null}, gu, out0_p,
                                                 H, 2 * I, eps, Tn);
        medusa_k::launch_gemv<T, medusa_k::SILU>(gu, {null}, {null}, {p["down_w"]}, {null}, out1_p, {null}, I, H, 0.0f,
                                                 Tn);
    """
    out = _layer_code(operands, [x.shape, x.shape, (scratch,)], [x.dtype] * 3, _LAYER_HEADER, body, start, eps, scale)
    return out[0], out[1]


# ---------------------------------------------------------------- a whole decoder layer, a few rows
_ROWS_LAYER_HEADER = _COMMON + _RMS_NORM_BODY + _QKV_ROPE_BODY + _SILU_MUL_BODY + _ATTENTION_BODY + _MMA_BODY


def rows_layer_ok(x, cache, mask, weights, head_dim) -> bool:
    """rows_layer serves x: 2 to MMA_MAX_ROWS fp16 rows (batch 1) over a cache with a mask, every
    weight one mma_rows takes (small ones: this is the path of small models, whose tree step is
    bound by Jittor's cost per op), the shapes cache_attention takes; or without a mask one row
    (the exact option's `tree` mode: a decode step through the tree's kernels)."""
    T = x.shape[1] if x.ndim == 3 else 0
    one = mask is None
    return (cache is not None and x.ndim == 3 and x.shape[0] == 1 and (T == 1 or not one) and use_layer_op()
            and use_rows_layer() and all(mma_rows_ok(x, w, exact=one) and w.shape[0] * w.shape[1] <= MMA_MAX_WEIGHT
                                         for w in weights)
            and cache_attention_ok(x.dtype, head_dim, cache.length + T))


def rows_layer(x, pending, in_norm, qkv_weight, qkv_bias, cos, sin, positions, keys, values, start, mask,
               o_weight, post_norm, gate_up_weight, down_weight, eps, scale):
    """decode_layer for 2-64 rows (a tree verification, a short prefill) of a small model in ONE
    Jittor op: the kernels of the op-by-op path (rms_norm or add_rms_norm, mma_rows for q/k/v,
    qkv_rope into the cache, cache_attention with the mask, mma_rows for o_proj, add_rms_norm,
    mma_rows for gate/up, silu_mul, mma_rows for down) with the same launch shapes, so the same
    results bit for bit, launched back to back from one op. x [1, T, H], mask [1, 1, T, start + T]
    -> (x + pending + attention, this layer's MLP output)."""
    T, H = x.shape[1], x.shape[2]
    nqd, nqkv, inter = o_weight.shape[0], qkv_weight.shape[1], down_weight.shape[0]
    operands = {"x": x, "pending": pending, "in_norm": in_norm, "qkv_w": qkv_weight, "qkv_b": qkv_bias,
                "cos": cos, "sin": sin, "pos": positions, "keys": keys, "values": values, "mask": mask,
                "o_w": o_weight, "post_norm": post_norm, "gate_up_w": gate_up_weight, "down_w": down_weight}
    # qkv | q | attention | o_proj | x + pending | normed | gate_up | SiLU * up, each T rows
    scratch = T * (nqkv + 2 * nqd + 3 * H + 3 * inter)
    ws = max(mma_workspace(T, H, nqkv), mma_workspace(T, nqd, H), mma_workspace(T, H, 2 * inter),
             mma_workspace(T, inter, H))

    def body(p, shape):
        half = lambda n: f"(const __half*){p[n]}" if n in p else "(const __half*)nullptr"
        first_norm = (f'medusa_k::launch_add_rms_norm({half("x")}, {half("pending")}, {half("in_norm")}, x1, h, T, H, eps);'
                      if pending is not None else
                      f'medusa_k::launch_rms_norm({half("x")}, {half("in_norm")}, h, T, H, eps);')
        return f"""
        const int T = {shape("x", 1)}, H = {shape("x", 2)}, S = start + T;
        __half* qkv = (__half*)out2_p; __half* q = qkv + T * Nqkv; __half* attn = q + T * NQD;
        __half* o = attn + T * NQD; __half* x1 = o + T * H; __half* h = x1 + T * H; __half* gu = h + T * H;
        __half* act = gu + T * 2 * I;
        float* ws = out3_p;
        const __half* residual = {"x1" if pending is not None else half("x")};
        {first_norm}
        medusa_k::launch_mma(h, {half("qkv_w")}, {half("qkv_b")}, qkv, ws, T, H, Nqkv);
        medusa_k::launch_qkv_rope<__half>(qkv, {p["cos"]}, {p["sin"]}, {p["pos"]}, q, (__half*){p["keys"]},
                                          (__half*){p["values"]}, 1, T, nq, nkv, D, L, start);
        medusa_k::launch_cache_attention<__half>(q, (__half*){p["keys"]}, (__half*){p["values"]},
                                                 {p.get("mask", "(const float*)nullptr")}, attn,
                                                 nq * T, nkv, (nq / nkv) * T, L, D, S, T, scale, 1, nullptr);
        medusa_k::launch_mma(attn, {half("o_w")}, nullptr, o, ws, T, NQD, H);
        medusa_k::launch_add_rms_norm<__half, __half>(residual, o, {half("post_norm")}, (__half*)out0_p, h, T, H, eps);
        medusa_k::launch_mma(h, {half("gate_up_w")}, nullptr, gu, ws, T, H, 2 * I);
        medusa_k::launch_silu_mul<__half>(gu, act, T, I);
        medusa_k::launch_mma(act, {half("down_w")}, nullptr, (__half*)out1_p, ws, T, I, H);
    """
    out = _layer_code(operands, [x.shape, x.shape, (scratch,), (ws,)],
                      ["float16", "float16", "float16", "float32"], _ROWS_LAYER_HEADER, body, start, eps, scale)
    return out[0], out[1]
