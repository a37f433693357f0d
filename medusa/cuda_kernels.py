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
use_gemv, use_layer_op, use_rows_layer, use_mma (and $MEDUSA_* for each).

Reference: the kernels of gpt-fast / vLLM-style decoding (one block per row for the norm, one
block per query row for attention over the cache, a thread per key position).
"""
import math
import os

from medusa.runtime import jt

_state = {"enabled": os.environ.get("MEDUSA_CUDA_KERNELS", "1") != "0",
          "gemv": os.environ.get("MEDUSA_GEMV", "1") != "0",
          "layer_op": os.environ.get("MEDUSA_LAYER_OP", "1") != "0",
          # rows_layer has not run on a GPU yet (the device went away before its first call): opt-in
          "rows_layer": os.environ.get("MEDUSA_ROWS_LAYER", "0") == "1"}


def use_kernels(enabled: bool = None) -> bool:
    """Turn the fused kernels on or off (None: only ask; $MEDUSA_CUDA_KERNELS=0 starts off), e.g.
    to time Jittor's own ops in the same process. Returns the setting."""
    if enabled is not None:
        _state["enabled"] = bool(enabled)
    return _state["enabled"]


def use_gemv(enabled: bool = None) -> bool:
    """The same for gemv alone ($MEDUSA_GEMV=0: one-row matmuls go to cuBLAS)."""
    if enabled is not None:
        _state["gemv"] = bool(enabled)
    return _state["gemv"]


def use_layer_op(enabled: bool = None) -> bool:
    """The same for decode_layer ($MEDUSA_LAYER_OP=0: a decode step's layer runs as six ops)."""
    if enabled is not None:
        _state["layer_op"] = bool(enabled)
    return _state["layer_op"]


def use_rows_layer(enabled: bool = None) -> bool:
    """The same for rows_layer, off unless $MEDUSA_ROWS_LAYER=1: it is written and compiled but has
    not run on a GPU yet (tests/test_gpu.py::test_rows_layer_equals_its_kernels holds it to the
    op-by-op path bit for bit; turn the default on once that passes on a device)."""
    if enabled is not None:
        _state["rows_layer"] = bool(enabled)
    return _state["rows_layer"]


MAX_ATTENTION_KEYS = 8192      # the scores of one query row live in shared memory (32 KB of 48)
MAX_HEAD_DIM = 256

_COMMON = r"""
#include <cuda_fp16.h>
namespace medusa_k {
__device__ __forceinline__ float f32(float x) { return x; }
__device__ __forceinline__ float f32(__half x) { return __half2float(x); }
template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }
// 16-byte loads: 8 halves or 4 floats, widened to fp32
template <class T> struct Vec;
template <> struct Vec<__half> {
    static constexpr int N = 8;
    __device__ static __forceinline__ void load(const __half* p, float* o) {
        const uint4 u = *reinterpret_cast<const uint4*>(p);
        const __half2* h = reinterpret_cast<const __half2*>(&u);
        for (int j = 0; j < 4; j++) { const float2 f = __half22float2(h[j]); o[2 * j] = f.x; o[2 * j + 1] = f.y; }
    }
};
template <> struct Vec<float> {
    static constexpr int N = 4;
    __device__ static __forceinline__ void load(const float* p, float* o) {
        const float4 u = *reinterpret_cast<const float4*>(p);
        o[0] = u.x; o[1] = u.y; o[2] = u.z; o[3] = u.w;
    }
};
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// sum (or max) over the block; every thread gets the result. `scratch` holds >= 32 floats.
__device__ float block_reduce(float v, float* scratch, bool is_max) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();                       // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : (is_max ? -INFINITY : 0.0f);
    v = is_max ? warp_max(v) : warp_sum(v);
    return v;
}
}  // namespace medusa_k
"""


# ---------------------------------------------------------------- RMSNorm
_RMS_NORM_BODY = r"""
namespace medusa_k {
// one block per row: y = x * rsqrt(mean(x^2) + eps) * w, accumulated in fp32
// with a residual first: h = x + d (written to sum), y = RMSNorm(h) * w
template <class T, class W>
__global__ void add_rms_norm(const T* x, const T* d, const W* w, T* sum, T* y, int H, float eps) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * H;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        const T h = from_f32<T>(f32(x[base + i]) + f32(d[base + i]));   // rounded like x + d in T
        sum[base + i] = h;
        const float v = f32(h);
        ss += v * v;
    }
    const float inv = rsqrtf(block_reduce(ss, scratch, false) / H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        y[base + i] = from_f32<T>(f32(from_f32<T>(f32(x[base + i]) + f32(d[base + i]))) * inv * f32(w[i]));
}
template <class T, class W>
__global__ void rms_norm(const T* x, const W* w, T* y, int H, float eps) {
    __shared__ float scratch[32];
    const T* row = x + (size_t)blockIdx.x * H;
    T* out = y + (size_t)blockIdx.x * H;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) { float v = f32(row[i]); ss += v * v; }
    const float inv = rsqrtf(block_reduce(ss, scratch, false) / H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x) out[i] = from_f32<T>(f32(row[i]) * inv * f32(w[i]));
}
// host-side launches, shared by the single ops and the layer ops (the same blockDim, so the
// same summation order and bit-identical results)
inline int norm_threads(int H) { return H >= 1024 ? 1024 : (H + 31) / 32 * 32; }
template <class T, class W>
inline void launch_rms_norm(const T* x, const W* w, T* y, size_t rows, int H, float eps) {
    rms_norm<<<rows, norm_threads(H)>>>(x, w, y, H, eps);
}
template <class T, class W>
inline void launch_add_rms_norm(const T* x, const T* d, const W* w, T* sum, T* y, size_t rows, int H, float eps) {
    add_rms_norm<<<rows, norm_threads(H)>>>(x, d, w, sum, y, H, eps);
}
}  // namespace medusa_k
"""
_RMS_NORM_HEADER = _COMMON + _RMS_NORM_BODY


def reference_rms_norm(x, weight, eps):
    xf = x.float32()  # accumulate in fp32 whatever the compute dtype
    xf = xf * jt.rsqrt((xf * xf).mean(-1, keepdims=True) + eps)
    return (xf * weight.float32()).cast(x.dtype)


def _rows(name, ndim):
    """C++ expression: the product of a jt.code operand's leading ndim - 1 extents (shapes are
    read at run time, so one compiled kernel serves every length)."""
    return " * ".join([f"(size_t){name}_shape{i}" for i in range(ndim - 1)] or ["(size_t)1"])


def rms_norm(x, weight, eps):
    """x [..., H] (fp16/fp32), weight [H] -> RMSNorm(x) * weight, same dtype as x."""
    return jt.code(x.shape, x.dtype, [x, weight], cuda_header=_RMS_NORM_HEADER, data={"eps": float(eps)},
                   cuda_src=f"""
        medusa_k::launch_rms_norm(in0_p, in1_p, out0_p, {_rows("in0", x.ndim)}, in0_shape{x.ndim - 1},
                                  (float)data["eps"]);
    """)


def reference_add_rms_norm(x, delta, weight, eps):
    h = x + delta
    return h, reference_rms_norm(h, weight, eps)


def add_rms_norm(x, delta, weight, eps):
    """(x + delta, RMSNorm(x + delta) * weight) in one kernel: a decoder layer's residual add
    and the norm after it."""
    return jt.code([x.shape, x.shape], [x.dtype, x.dtype], [x, delta, weight], cuda_header=_RMS_NORM_HEADER,
                   data={"eps": float(eps)}, cuda_src=f"""
        medusa_k::launch_add_rms_norm(in0_p, in1_p, in2_p, out0_p, out1_p, {_rows("in0", x.ndim)},
                                      in0_shape{x.ndim - 1}, (float)data["eps"]);
    """)


# ---------------------------------------------------------------- split + RoPE
_QKV_ROPE_BODY = r"""
namespace medusa_k {
// qkv [B, T, (nq + 2 nkv) D] -> q [B, nq, T, D], k and v [B, nkv, L, D] at positions
// [start, start + T) (both rotated; L = T, start = 0 for fresh outputs, the cache's buffers and
// length otherwise). cos/sin: tables [P, D] (fp32), positions [B, T] int32. One thread per
// element of a head.
template <class T>
__global__ void qkv_rope(const T* qkv, const float* cos_t, const float* sin_t, const int* pos,
                         T* q, T* k, T* v, int B, int Tn, int nq, int nkv, int D, int L, int start) {
    const int heads = nq + 2 * nkv;
    const size_t total = (size_t)B * Tn * heads * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int d = i % D;
        const int h = (i / D) % heads;
        const int t = (i / ((size_t)D * heads)) % Tn;
        const int b = i / ((size_t)D * heads * Tn);
        const float x = f32(qkv[i]);
        if (h >= nq + nkv) {                                   // v: layout only
            v[(((size_t)b * nkv + (h - nq - nkv)) * L + start + t) * D + d] = qkv[i];
            continue;
        }
        const int half = D / 2;
        const float other = f32(qkv[d < half ? i + half : i - half]);
        const size_t p = (size_t)pos[b * Tn + t] * D + d;
        const float r = x * cos_t[p] + (d < half ? -other : other) * sin_t[p];
        if (h < nq) q[(((size_t)b * nq + h) * Tn + t) * D + d] = from_f32<T>(r);
        else        k[(((size_t)b * nkv + (h - nq)) * L + start + t) * D + d] = from_f32<T>(r);
    }
}
inline int grid_of(size_t total) { return (int)(total < 4096 * 256 ? (total + 255) / 256 : 4096); }
template <class T>
inline void launch_qkv_rope(const T* qkv, const float* cos_t, const float* sin_t, const int* pos, T* q, T* k, T* v,
                            int B, int Tn, int nq, int nkv, int D, int L, int start) {
    qkv_rope<<<grid_of((size_t)B * Tn * (nq + 2 * nkv) * D), 256>>>(qkv, cos_t, sin_t, pos, q, k, v, B, Tn, nq, nkv,
                                                                    D, L, start);
}
}  // namespace medusa_k
"""
_QKV_ROPE_HEADER = _COMMON + _QKV_ROPE_BODY


def rotate_half(x):
    half = x.shape[-1] // 2
    return jt.concat([-x[..., half:], x[..., :half]], dim=-1)


def reference_qkv_rope(qkv, cos, sin, positions, nq, nkv, d):
    """What qkv_rope computes, with Jittor's ops (the model's unfused path does the same)."""
    B, T, _ = qkv.shape
    split = lambda a, n: qkv[:, :, a * d:(a + n) * d].reshape(B, T, n, d).transpose(0, 2, 1, 3)
    q, k, v = split(0, nq), split(nq, nkv), split(nq + nkv, nkv)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)          # [B, 1, T, D]
    rope = lambda x: (x.float32() * c + rotate_half(x.float32()) * s).cast(x.dtype)
    return rope(q), rope(k), v


_QKV_ROPE_LAUNCH = """
    medusa_k::launch_qkv_rope(in0_p, in1_p, in2_p, in3_p, out0_p, {k}, {v}, in0_shape0, in0_shape1,
        (int)data["nq"], (int)data["nkv"], out0_shape3, {L}, {start});
"""


def qkv_rope(qkv, cos, sin, positions, nq, nkv, d):
    """qkv [B, T, (nq + 2 nkv) d] (the fused projection's output), cos/sin fp32 tables [P, d],
    positions int32 [B, T] -> q [B, nq, T, d], k, v [B, nkv, T, d]: split, heads-major, RoPE on
    q and k (fp32 math). Replaces three reshapes, three transposes, two table lookups and the
    rotate_half arithmetic."""
    B, T, _ = qkv.shape
    shapes = [(B, nq, T, d), (B, nkv, T, d), (B, nkv, T, d)]
    return jt.code(shapes, [qkv.dtype] * 3, [qkv, cos, sin, positions], cuda_header=_QKV_ROPE_HEADER,
                   data={"nq": nq, "nkv": nkv},
                   cuda_src=_QKV_ROPE_LAUNCH.format(k="out1_p", v="out2_p", L="in0_shape1", start="0"))


def qkv_rope_into_cache(qkv, cos, sin, positions, keys, values, start, nq, nkv, d):
    """qkv_rope that writes k and v straight into the cache's buffers keys, values [B, nkv, L, d]
    at positions [start, start + T) instead of returning them (two setitem ops fewer per layer)
    -> q [B, nkv, G*T, d], the layout cache_attention reads (G = nq / nkv query heads per kv head
    folded into rows). The buffers are written in place: the write happens before any op that
    takes q (cache_attention), and the cache object keeps the buffers alive."""
    B, T, _ = qkv.shape
    return jt.code((B, nkv, (nq // nkv) * T, d), qkv.dtype, [qkv, cos, sin, positions, keys, values],
                   cuda_header=_QKV_ROPE_HEADER, data={"nq": nq, "nkv": nkv, "start": start},
                   cuda_src=_QKV_ROPE_LAUNCH.format(k="in4_p", v="in5_p", L="in4_shape2", start='(int)data["start"]'))


# ---------------------------------------------------------------- SiLU(gate) * up
_SILU_MUL_BODY = r"""
namespace medusa_k {
template <class T>
__global__ void silu_mul(const T* gu, T* y, size_t rows, int I) {
    const size_t total = rows * I;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / I;
        const int c = i % I;
        const float g = f32(gu[r * 2 * I + c]), u = f32(gu[r * 2 * I + I + c]);
        y[i] = from_f32<T>(g / (1.0f + __expf(-g)) * u);
    }
}
template <class T>
inline void launch_silu_mul(const T* gu, T* y, size_t rows, int I) {
    const size_t total = rows * I;
    silu_mul<<<(int)(total < 4096 * 256 ? (total + 255) / 256 : 4096), 256>>>(gu, y, rows, I);
}
}  // namespace medusa_k
"""
_SILU_MUL_HEADER = _COMMON + _SILU_MUL_BODY


def reference_silu_mul(gate_up):
    I = gate_up.shape[-1] // 2
    return jt.nn.silu(gate_up[..., :I]) * gate_up[..., I:]


def silu_mul(gate_up):
    """gate_up [..., 2I] (the fused gate/up projection) -> SiLU(gate) * up [..., I]."""
    I = gate_up.shape[-1] // 2
    return jt.code((*gate_up.shape[:-1], I), gate_up.dtype, [gate_up], cuda_header=_SILU_MUL_HEADER, cuda_src=f"""
        medusa_k::launch_silu_mul(in0_p, out0_p, {_rows("in0", gate_up.ndim)}, out0_shape{gate_up.ndim - 1});
    """)


# ---------------------------------------------------------------- one row times a weight
_GEMV_BODY = r"""
namespace medusa_k {
// y [N] = x [K] @ w [K, N] (row-major, the Linear layout), with x one of
//   PLAIN: a row x;
//   NORM:  RMSNorm(x (+ d)) * nw, the residual add and the norm before a projection; block 0
//          also writes the sum x + d (the new residual) when d is given;
//   SILU:  SiLU(gu[k]) * gu[K + k] of the fused gate/up projection's output gu [2K].
// Each element of x is rounded to T as the unfused ops would store it. A block covers 4 x
// 16-byte column groups and 64 slices of K; every thread streams its slice of rows (unrolled
// by 4; 8 loads in flight per thread made the Vicuna-7B step 1.6x slower: fewer warps fit), and
// partial sums meet in shared memory. At batch 1 this is the whole matmul
// cost of a decode step. NORM keeps the normed row in dynamic shared memory (K floats).
enum { PLAIN = 0, NORM = 1, SILU = 2 };
template <class T, int MODE>
__global__ void gemv(const T* x, const T* d, const T* nw, const T* w, const T* bias, T* y, T* sum,
                     int K, int N, float eps) {
    constexpr int V = Vec<T>::N, GROUPS = 4, SLICES = 64;          // blockDim = GROUPS * SLICES
    __shared__ float part[SLICES][GROUPS * V];
    extern __shared__ float xs[];
    if (MODE == NORM) {
        __shared__ float scratch[32];
        float ss = 0.0f;
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            const float h = d ? f32(from_f32<T>(f32(x[k]) + f32(d[k]))) : f32(x[k]);
            if (d && blockIdx.x == 0) sum[k] = from_f32<T>(h);
            xs[k] = h;
            ss += h * h;
        }
        const float inv = rsqrtf(block_reduce(ss, scratch, false) / K + eps);
        for (int k = threadIdx.x; k < K; k += blockDim.x) xs[k] = f32(from_f32<T>(xs[k] * inv * f32(nw[k])));
        __syncthreads();
    }
    const int g = threadIdx.x % GROUPS, slice = threadIdx.x / GROUPS;
    const int col = (blockIdx.x * GROUPS + g) * V;
    float acc[V];
    #pragma unroll
    for (int j = 0; j < V; j++) acc[j] = 0.0f;
    if (col < N) {
        #pragma unroll 4
        for (int k = slice; k < K; k += SLICES) {
            float wv[V];
            Vec<T>::load(w + (size_t)k * N + col, wv);
            float xk;
            if (MODE == PLAIN) xk = f32(x[k]);
            else if (MODE == NORM) xk = xs[k];
            else {
                const float gate = f32(x[k]);
                xk = f32(from_f32<T>(gate / (1.0f + __expf(-gate)) * f32(x[K + k])));
            }
            #pragma unroll
            for (int j = 0; j < V; j++) acc[j] += xk * wv[j];
        }
    }
    #pragma unroll
    for (int j = 0; j < V; j++) part[slice][g * V + j] = acc[j];
    __syncthreads();
    for (int i = threadIdx.x; i < GROUPS * V; i += blockDim.x) {
        const int c = blockIdx.x * GROUPS * V + i;
        if (c < N) {
            float s = 0.0f;
            for (int t = 0; t < SLICES; t++) s += part[t][i];
            y[c] = bias ? from_f32<T>(f32(from_f32<T>(s)) + f32(bias[c])) : from_f32<T>(s);
        }
    }
}
}  // namespace medusa_k
"""
_GEMV_HEADER = _COMMON + _GEMV_BODY

MAX_NORM_GEMV_K = 8192         # the normed row lives in shared memory (32 KB) beside 8 KB of partial sums


def _one_row_ok(a, b) -> bool:
    return (bool(jt.flags.use_cuda and jt.flags.no_grad) and use_kernels() and use_gemv() and b.ndim == 2
            and math.prod(a.shape[:-1]) == 1 and b.shape[1] % 8 == 0 and str(a.dtype) == str(b.dtype)
            and str(a.dtype) in ("float16", "float32"))


def gemv_ok(a, b, trans_b=False) -> bool:
    """One row against a [K, N] weight (the decode step's projections), N a multiple of 8."""
    return not trans_b and _one_row_ok(a, b)


def norm_gemv_ok(x, w) -> bool:
    """norm_gemv serves x: one row of at most MAX_NORM_GEMV_K."""
    return _one_row_ok(x, w) and x.shape[-1] <= MAX_NORM_GEMV_K


def silu_gemv_ok(gate_up, w) -> bool:
    return _one_row_ok(gate_up, w) and gate_up.shape[-1] == 2 * w.shape[0]


def _gemv(mode, operands, out_shape, sum_shape=None, eps=0.0):
    """One launch of the gemv kernel in `mode` (PLAIN, NORM or SILU). operands: x, w and, where
    the mode has them, d, nw, bias (None: absent); sum_shape: also return NORM's x + d."""
    names = [n for n in ("x", "d", "nw", "w", "bias") if operands.get(n) is not None]
    arg = {n: f"in{i}_p" for i, n in enumerate(names)}
    ptr = lambda n: arg.get(n, "(in0_type*)nullptr")
    x, w = operands["x"], operands["w"]
    cols = 4 * (8 if str(x.dtype) == "float16" else 4)              # columns per block
    shapes = [out_shape] + ([sum_shape] if sum_shape else [])
    out = jt.code(shapes, [x.dtype] * len(shapes), [operands[n] for n in names], cuda_header=_GEMV_HEADER,
                  data={"eps": float(eps)}, cuda_src=f"""
        const int K = in{names.index("w")}_shape0, N = in{names.index("w")}_shape1;
        const int shared = {"4 * K" if mode == "NORM" else "0"};
        if (shared > 48 * 1024)
            cudaFuncSetAttribute(medusa_k::gemv<in0_type, medusa_k::{mode}>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
        medusa_k::gemv<in0_type, medusa_k::{mode}><<<(N + {cols - 1}) / {cols}, 256, shared>>>(
            {ptr("x")}, {ptr("d")}, {ptr("nw")}, {ptr("w")}, {ptr("bias")}, out0_p,
            {"out1_p" if sum_shape else "(in0_type*)nullptr"}, K, N, (float)data["eps"]);
    """)
    return out if sum_shape else out[0]


def gemv(a, b, trans_b=False):
    """a [..., K] with one row in all, b [K, N] -> a @ b [..., N] (gemv_ok says when)."""
    assert not trans_b
    return _gemv("PLAIN", {"x": a, "w": b}, (*a.shape[:-1], b.shape[1]))


def norm_gemv(x, delta, norm_weight, eps, w, bias=None):
    """(h, RMSNorm(h) * norm_weight @ w (+ bias)) with h = x + delta (x itself when delta is
    None), one row: the residual add, the norm after it and the projection that reads it, in one
    kernel (norm_gemv_ok says when). Each block recomputes the norm of the row, one read of it
    from L2 against K x 32 weight elements."""
    operands = {"x": x, "d": delta, "nw": norm_weight, "w": w, "bias": bias}
    out_shape = (*x.shape[:-1], w.shape[1])
    if delta is None:
        return x, _gemv("NORM", operands, out_shape, eps=eps)
    y, h = _gemv("NORM", operands, out_shape, sum_shape=tuple(x.shape), eps=eps)
    return h, y


def reference_norm_gemv(x, delta, norm_weight, eps, w, bias=None):
    h = x if delta is None else x + delta
    y = jt.matmul(reference_rms_norm(h, norm_weight, eps), w)
    return h, (y if bias is None else y + bias)


def silu_gemv(gate_up, w):
    """SiLU(gate) * up @ w for one row of the fused gate/up output [..., 2I], w [I, N]: the MLP's
    activation and down projection in one kernel (silu_gemv_ok says when)."""
    return _gemv("SILU", {"x": gate_up, "w": w}, (*gate_up.shape[:-1], w.shape[1]))


def reference_silu_gemv(gate_up, w):
    return jt.matmul(reference_silu_mul(gate_up), w)


# ---------------------------------------------------------------- KV-cache compaction
MAX_COMPACT_KEEP = 32          # positions one compaction moves (a tree path: depth + 1)
MAX_COMPACT_BUFFERS = 256      # key and value buffers of up to 128 layers

_COMPACT_BODY = r"""
namespace medusa_k {
template <class T> struct Buffers { T* p[256]; };
struct Keep { int at[32]; };
// Every buffer [rows, L, D] (rows = B * kv_heads): positions keep[0..n) move to start, start + 1, ...
// A thread owns one (buffer, row, d) column and reads all n sources before it writes, so a
// source that is also a destination (keep[j] == start + i, j < i) is never read after it is
// overwritten.
// keep_at: the positions in device memory instead (the device loop moves a path it has not fetched)
template <class T>
__global__ void compact(Buffers<T> bufs, int nbuf, int rows, int L, int D, int start, int n, Keep keep,
                        const int* keep_at) {
    const size_t total = (size_t)nbuf * rows * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int d = i % D;
        const int r = (i / D) % rows;
        T* col = bufs.p[i / ((size_t)D * rows)] + (size_t)r * L * D + d;
        T v[32];
        for (int j = 0; j < n; j++) v[j] = col[(size_t)(keep_at ? keep_at[j] : keep.at[j]) * D];
        for (int j = 0; j < n; j++) col[(size_t)(start + j) * D] = v[j];
    }
}
}  // namespace medusa_k
"""
_COMPACT_HEADER = _COMMON + _COMPACT_BODY


def compact_ok(buffers, n) -> bool:
    return (bool(jt.flags.use_cuda) and use_kernels() and 0 < n <= MAX_COMPACT_KEEP
            and len(buffers) <= MAX_COMPACT_BUFFERS and str(buffers[0].dtype) in ("float16", "float32"))


def compact_cache(buffers, start, keep):
    """Move positions `keep` (ascending, each >= start) of every buffer [B, kv_heads, L, D] to
    start, start + 1, ... in place, one kernel for all layers (KVCache.compact's 4 ops a layer
    otherwise). Returns a one-element var to sync: nothing else depends on the writes."""
    n = len(keep)
    fill = "\n".join(f"bufs.p[{i}] = in{i}_p;" for i in range(len(buffers)))
    keeps = "\n".join(f'keep.at[{j}] = {j} < n ? (int)data["k{j}"] : 0;' for j in range(MAX_COMPACT_KEEP))
    data = {"start": int(start), "n": n, **{f"k{j}": int(keep[j]) if j < n else 0 for j in range(MAX_COMPACT_KEEP)}}
    return jt.code((1,), "int32", list(buffers), cuda_header=_COMPACT_HEADER, data=data, cuda_src=f"""
        medusa_k::Buffers<in0_type> bufs;
        {fill}
        medusa_k::Keep keep;
        const int n = (int)data["n"];
        {keeps}
        const int rows = in0_shape0 * in0_shape1;
        const size_t total = (size_t){len(buffers)} * rows * in0_shape3;
        const int blocks = (int)(total < 4096 * 256 ? (total + 255) / 256 : 4096);
        medusa_k::compact<<<blocks, 256>>>(bufs, {len(buffers)}, rows, in0_shape2, in0_shape3,
                                           (int)data["start"], n, keep, nullptr);
        cudaMemsetAsync(out0_p, 0, sizeof(int));
    """)


def compact_cache_at(buffers, start, keep):
    """compact_cache with the positions in a device var keep (int32 [n], absolute, n <= 32),
    so the host need not know them: the device loop moves a path it has not fetched. Positions
    past the real path may repeat (the cache is truncated after them). Returns a var to sync."""
    n = keep.shape[0]
    fill = "\n".join(f"bufs.p[{i}] = in{i}_p;" for i in range(len(buffers)))
    k = len(buffers)
    return jt.code((1,), "int32", list(buffers) + [keep], cuda_header=_COMPACT_HEADER, data={"start": int(start)},
                   cuda_src=f"""
        medusa_k::Buffers<in0_type> bufs;
        {fill}
        const int rows = in0_shape0 * in0_shape1;
        const size_t total = (size_t){k} * rows * in0_shape3;
        const int blocks = (int)(total < 4096 * 256 ? (total + 255) / 256 : 4096);
        medusa_k::compact<<<blocks, 256>>>(bufs, {k}, rows, in0_shape2, in0_shape3, (int)data["start"],
                                           in{k}_shape0, medusa_k::Keep(), (const int*)in{k}_p);
        cudaMemsetAsync(out0_p, 0, sizeof(int));
    """)


# ---------------------------------------------------------------- attention over the cache
_ATTENTION_BODY = r"""
namespace medusa_k {
// One block per query row. q [B, Hkv, R, D] (the G query heads of a kv head folded into rows,
// head-major: row = g * T + t), keys/values: the whole cache [B, Hkv, L, D], of which the first
// S positions are read; mask [B, T, S] additive fp32 (has_mask) or none (every key visible).
// Scores: a thread per key position, 16-byte loads over D; fp32 softmax in shared memory; the
// value sum: D / N threads per key (N elements each, 16-byte loads), blockDim / (D / N) keys at
// once, partial sums combined in shared memory. D must be a multiple of 8.
// tokens_major: out is [B, T, Hq * D] (query head = kv head * G + g), ready for o_proj; else
// it has q's layout.
template <class T>
__global__ void cache_attention(const T* q, const T* keys, const T* values, const float* mask, T* out,
                                int Hkv, int R, int L, int D, int S, int Tn, int has_mask, float scale,
                                int tokens_major) {
    constexpr int N = Vec<T>::N;
    extern __shared__ float smem[];                 // [D] query | [S] scores | [32] scratch | [blockDim * N] partials
    float* qs = smem;
    float* sc = qs + D;
    float* scratch = sc + S;
    float* part = scratch + 32;
    const int row = blockIdx.x % R, bh = blockIdx.x / R, b = bh / Hkv;
    const int t = row % Tn;
    const T* qrow = q + (size_t)blockIdx.x * D;
    const T* kbase = keys + (size_t)bh * L * D;
    const T* vbase = values + (size_t)bh * L * D;
    const float* mrow = has_mask ? mask + ((size_t)b * Tn + t) * S : nullptr;
    const int G = R / Tn, head = (bh % Hkv) * G + row / Tn;
    T* orow = out + (tokens_major ? (((size_t)b * Tn + t) * Hkv * G + head) * D : (size_t)blockIdx.x * D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = f32(qrow[i]) * scale;
    __syncthreads();
    float m = -INFINITY;
    for (int s = threadIdx.x; s < S; s += blockDim.x) {
        const T* krow = kbase + (size_t)s * D;
        float acc = 0.0f, k8[N];
        for (int i = 0; i < D; i += N) {
            Vec<T>::load(krow + i, k8);
            #pragma unroll
            for (int j = 0; j < N; j++) acc += qs[i + j] * k8[j];
        }
        acc += mrow ? mrow[s] : 0.0f;
        sc[s] = acc;
        m = fmaxf(m, acc);
    }
    m = block_reduce(m, scratch, true);
    float z = 0.0f;
    for (int s = threadIdx.x; s < S; s += blockDim.x) { const float e = __expf(sc[s] - m); sc[s] = e; z += e; }
    z = block_reduce(z, scratch, false);
    __syncthreads();                                // every e in sc is written
    const int chunks = D / N, groups = blockDim.x / chunks;
    const int g = threadIdx.x / chunks, c = threadIdx.x % chunks;
    if (g < groups) {
        float acc[N], v8[N];
        #pragma unroll
        for (int j = 0; j < N; j++) acc[j] = 0.0f;
        for (int s = g; s < S; s += groups) {
            Vec<T>::load(vbase + (size_t)s * D + c * N, v8);
            const float p = sc[s];
            #pragma unroll
            for (int j = 0; j < N; j++) acc[j] += p * v8[j];
        }
        #pragma unroll
        for (int j = 0; j < N; j++) part[g * D + c * N + j] = acc[j];
    }
    __syncthreads();
    const float inv = 1.0f / z;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < groups; k++) acc += part[k * D + i];
        orow[i] = from_f32<T>(acc * inv);
    }
}
template <class T>
inline void launch_cache_attention(const T* q, const T* keys, const T* values, const float* mask, T* out, int blocks,
                                   int Hkv, int R, int L, int D, int S, int Tn, float scale, int tokens_major) {
    const int threads = 256, shared = 4 * (D + S + 32 + threads * 8);
    if (shared > 48 * 1024)
        cudaFuncSetAttribute(cache_attention<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
    cache_attention<<<blocks, threads, shared>>>(q, keys, values, mask, out, Hkv, R, L, D, S, Tn, mask != nullptr,
                                                 scale, tokens_major);
}
}  // namespace medusa_k
"""
_ATTENTION_HEADER = _COMMON + _ATTENTION_BODY


def cache_attention_ok(dtype, head_dim, length) -> bool:
    """The shapes cache_attention serves: up to MAX_ATTENTION_KEYS keys (its scores live in shared
    memory), head_dim a multiple of 8 up to MAX_HEAD_DIM (16-byte loads), fp16 or fp32."""
    return bool(jt.flags.use_cuda) and length <= MAX_ATTENTION_KEYS and head_dim <= MAX_HEAD_DIM \
        and head_dim % 8 == 0 and str(dtype) in ("float16", "float32")


def cache_attention(q, keys, values, length, mask, scale, tokens_major=False):
    """softmax(q k^T * scale + mask) v over the first `length` positions of the cache.
    q [B, Hkv, G*T, D]; keys, values: the cache's whole buffers [B, Hkv, L, D] (no slice is
    materialised); mask: additive fp32 [B, 1, T, length] or None -> [B, Hkv, G*T, D], or with
    tokens_major [B, T, Hkv*G*D] (heads side by side per token, as o_proj reads them)."""
    B, H, R, D = q.shape
    T = 1 if mask is None else mask.shape[-2]
    inputs = [q, keys, values] + ([mask.reshape(B, T, length)] if mask is not None else [])
    mask_p = "in3_p" if mask is not None else "(const float*)nullptr"
    shape = (B, T, H * (R // T) * D) if tokens_major else q.shape
    return jt.code(shape, q.dtype, inputs, cuda_header=_ATTENTION_HEADER,
                   data={"S": length, "T": T, "scale": float(scale)}, cuda_src=f"""
        medusa_k::launch_cache_attention(in0_p, in1_p, in2_p, {mask_p}, out0_p, in0_shape0 * in0_shape1 * in0_shape2,
            in0_shape1, in0_shape2, in1_shape2, in0_shape3, (int)data["S"], (int)data["T"], (float)data["scale"],
            {int(tokens_major)});
    """)


# ---------------------------------------------------------------- a whole decoder layer, one token
_LAYER_HEADER = _COMMON + _GEMV_BODY + _QKV_ROPE_BODY + _ATTENTION_BODY


def decode_layer_ok(x, cache, head_dim) -> bool:
    """decode_layer serves x: one token (batch 1) over a cache, with the shapes its kernels take
    (norm_gemv_ok, cache_attention_ok). The layer itself must have fused projections, no q/k norm
    and no o_proj bias (the caller knows)."""
    H = x.shape[-1]
    return (cache is not None and math.prod(x.shape[:-1]) == 1 and use_kernels() and use_gemv() and use_layer_op()
            and bool(jt.flags.use_cuda and jt.flags.no_grad) and H <= MAX_NORM_GEMV_K and H % 8 == 0
            and cache_attention_ok(x.dtype, head_dim, cache.length + 1))


def decode_layer(x, pending, in_norm, qkv_weight, qkv_bias, cos, sin, positions, keys, values, start,
                 o_weight, post_norm, gate_up_weight, down_weight, eps, scale):
    """One decoder layer for one token in ONE Jittor op: the six kernels of the decode path
    (norm_gemv for q/k/v, qkv_rope into the cache, cache_attention, gemv for o_proj, norm_gemv for
    gate/up, silu_gemv for down) launched back to back from one jt.code op on one stream. Jittor's
    cost per op (building, scheduling, allocating its outputs) is paid once per layer instead of
    six times; the launches keep their order on the stream, so each kernel reads what the one
    before wrote. x [1, 1, H]: the residual stream with `pending` (the last layer's MLP output,
    None before the first layer) not yet added; keys/values [1, nkv, L, d]: the cache's buffers,
    the new position written at `start` -> (x + pending + attention, this layer's MLP output),
    the same pair as model.DecoderLayer.execute_pending."""
    H, nqd = x.shape[-1], o_weight.shape[0]
    nqkv, inter = qkv_weight.shape[1], down_weight.shape[0]
    operands = {"x": x, "pending": pending, "in_norm": in_norm, "qkv_w": qkv_weight, "qkv_b": qkv_bias,
                "cos": cos, "sin": sin, "pos": positions, "keys": keys, "values": values, "o_w": o_weight,
                "post_norm": post_norm, "gate_up_w": gate_up_weight, "down_w": down_weight}
    names = [n for n, v in operands.items() if v is not None]
    p = {n: f"in{i}_p" for i, n in enumerate(names)}
    shape = lambda n, i: f"in{names.index(n)}_shape{i}"
    null = "(in0_type*)nullptr"
    scratch = nqkv + 2 * nqd + 2 * H + 2 * inter        # qkv | q | attention | o_proj | x + pending | gate_up
    out = jt.code([x.shape, x.shape, (scratch,)], [x.dtype] * 3, [operands[n] for n in names],
                  cuda_header=_LAYER_HEADER, data={"start": int(start), "eps": float(eps), "scale": float(scale)},
                  cuda_src=f"""
        typedef in0_type T;
        const int H = {shape("x", x.ndim - 1)}, Nqkv = {shape("qkv_w", 1)}, NQD = {shape("o_w", 0)};
        const int I = {shape("down_w", 0)}, nkv = {shape("keys", 1)}, L = {shape("keys", 2)}, D = {shape("keys", 3)};
        const int nq = NQD / D, start = (int)data["start"], S = start + 1;
        const float eps = (float)data["eps"], scale = (float)data["scale"];
        constexpr int COLS = 4 * medusa_k::Vec<T>::N, THREADS = 256;
        T* qkv = out2_p; T* q = qkv + Nqkv; T* attn = q + NQD; T* o = attn + NQD; T* x1 = o + H; T* gu = x1 + H;
        const T* residual = {"x1" if pending is not None else p["x"]};
        medusa_k::gemv<T, medusa_k::NORM><<<(Nqkv + COLS - 1) / COLS, THREADS, 4 * H>>>(
            {p["x"]}, {p.get("pending", null)}, {p["in_norm"]}, {p["qkv_w"]}, {p.get("qkv_b", null)}, qkv,
            {"x1" if pending is not None else null}, H, Nqkv, eps);
        medusa_k::launch_qkv_rope<T>(qkv, {p["cos"]}, {p["sin"]}, {p["pos"]}, q, {p["keys"]}, {p["values"]},
                                     1, 1, nq, nkv, D, L, start);
        medusa_k::launch_cache_attention<T>(q, {p["keys"]}, {p["values"]}, nullptr, attn, nq, nkv, nq / nkv, L, D,
                                            S, 1, scale, 1);
        medusa_k::gemv<T, medusa_k::PLAIN><<<(H + COLS - 1) / COLS, THREADS>>>(attn, {null}, {null}, {p["o_w"]},
            {null}, o, {null}, NQD, H, 0.0f);
        medusa_k::gemv<T, medusa_k::NORM><<<(2 * I + COLS - 1) / COLS, THREADS, 4 * H>>>(residual, o,
            {p["post_norm"]}, {p["gate_up_w"]}, {null}, gu, out0_p, H, 2 * I, eps);
        medusa_k::gemv<T, medusa_k::SILU><<<(H + COLS - 1) / COLS, THREADS>>>(gu, {null}, {null}, {p["down_w"]},
            {null}, out1_p, {null}, I, H, 0.0f);
    """)
    return out[0], out[1]


# ---------------------------------------------------------------- a few rows times a weight (tensor cores)
MMA_MAX_ROWS = 64              # rows of x one launch serves (four 16-row tiles)
# 2-64 rows through mma_rows only against weights of at most this many elements: measured on the
# H200 (December), a SmolLM2-shaped 64-node tree step took 8.2 ms with it and 9.4 with cuBLAS,
# a Vicuna-7B-shaped one 23.0 ms with it and 10.0 with cuBLAS (its weights are 17-90M elements:
# there the product is bound by streaming the weight, which cuBLAS does better)
MMA_MAX_WEIGHT = 1 << 23

_MMA_BODY = r"""
#include <mma.h>
namespace medusa_k {
// y [M, N] = x [M, K] @ w [K, N], fp16 in, fp32 accumulation, M <= 64: a tree verification's
// projections. cuBLAS picks kernels for large M; at M <= 64 the product is bound by streaming
// w, so every weight tile is read once and applied to all M rows on the tensor cores (wmma
// 16x16x16). A block: 4 warps x 32 columns, one slice of K (split K: gridDim.y slices, partial
// sums added into the fp32 workspace ws, zeroed before); x's 64 x 64 chunks are staged in
// shared memory (rows >= M are zeros); then mma_finish rounds ws to fp16 (+ bias).
constexpr int MMA_KC = 64, MMA_LD = MMA_KC + 8, MMA_TARGET_BLOCKS = 528;   // 4 per SM of an H100/H200
__global__ void mma_rows(const __half* x, const __half* w, float* ws, int M, int K, int N, int k_slice) {
    using namespace nvcuda;
    __shared__ __align__(32) __half xs[64 * MMA_LD];
    __shared__ __align__(32) float tile[4][16 * 16];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int col0 = (blockIdx.x * 4 + warp) * 32;
    const int k_begin = blockIdx.y * k_slice, k_end = min(K, k_begin + k_slice);
    const int mtiles = (M + 15) / 16;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
    #pragma unroll
    for (int m = 0; m < 4; m++)
        #pragma unroll
        for (int n = 0; n < 2; n++) wmma::fill_fragment(acc[m][n], 0.0f);
    for (int k0 = k_begin; k0 < k_end; k0 += MMA_KC) {
        __syncthreads();                                   // xs is free again
        for (int i = threadIdx.x; i < 64 * MMA_KC / 8; i += blockDim.x) {
            const int r = i / (MMA_KC / 8), c = (i % (MMA_KC / 8)) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (r < M) v = *reinterpret_cast<const uint4*>(x + (size_t)r * K + k0 + c);
            *reinterpret_cast<uint4*>(xs + r * MMA_LD + c) = v;
        }
        __syncthreads();
        if (col0 < N) {
            #pragma unroll
            for (int kk = 0; kk < MMA_KC; kk += 16) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b[2];
                #pragma unroll
                for (int n = 0; n < 2; n++)
                    if (col0 + 16 * n < N) wmma::load_matrix_sync(b[n], w + (size_t)(k0 + kk) * N + col0 + 16 * n, N);
                #pragma unroll
                for (int m = 0; m < 4; m++) {
                    if (m >= mtiles) break;
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
                    wmma::load_matrix_sync(a, xs + (16 * m) * MMA_LD + kk, MMA_LD);
                    #pragma unroll
                    for (int n = 0; n < 2; n++)
                        if (col0 + 16 * n < N) wmma::mma_sync(acc[m][n], a, b[n], acc[m][n]);
                }
            }
        }
    }
    if (col0 >= N) return;
    for (int m = 0; m < mtiles; m++)
        for (int n = 0; n < 2; n++) {
            if (col0 + 16 * n >= N) continue;
            wmma::store_matrix_sync(tile[warp], acc[m][n], 16, wmma::mem_row_major);
            __syncwarp();
            for (int i = lane; i < 256; i += 32) {
                const int r = 16 * m + i / 16, c = col0 + 16 * n + i % 16;
                if (r < M) atomicAdd(ws + (size_t)r * N + c, tile[warp][i]);
            }
            __syncwarp();
        }
}
__global__ void mma_finish(const float* ws, const __half* bias, __half* y, int M, int N) {
    const size_t total = (size_t)M * N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const __half r = __float2half(ws[i]);
        y[i] = bias ? __float2half(__half2float(r) + __half2float(bias[i % N])) : r;
    }
}
// the split of K: about MMA_TARGET_BLOCKS blocks, slices of whole 64-row chunks
inline void mma_plan(int K, int N, int* splits, int* k_slice) {
    const int col_blocks = (N + 127) / 128, chunks = K / 64;
    int s = (MMA_TARGET_BLOCKS + col_blocks - 1) / col_blocks;
    s = s > chunks ? chunks : (s < 1 ? 1 : s);
    *k_slice = 64 * ((chunks + s - 1) / s);
    *splits = (K + *k_slice - 1) / *k_slice;
}
// y = x @ w (+ bias): zero the workspace ws [M, N] fp32, the split product, the rounding
inline void launch_mma(const __half* x, const __half* w, const __half* bias, __half* y, float* ws, int M, int K, int N) {
    int splits, k_slice;
    mma_plan(K, N, &splits, &k_slice);
    cudaMemsetAsync(ws, 0, sizeof(float) * (size_t)M * N);
    mma_rows<<<dim3((N + 127) / 128, splits), 128>>>(x, w, ws, M, K, N, k_slice);
    const size_t total = (size_t)M * N;
    mma_finish<<<(int)(total < 4096 * 256 ? (total + 255) / 256 : 4096), 256>>>(ws, bias, y, M, N);
}
}  // namespace medusa_k
"""
_MMA_HEADER = _COMMON + _MMA_BODY

_state.setdefault("mma", os.environ.get("MEDUSA_MMA", "1") != "0")


def use_mma(enabled: bool = None) -> bool:
    """The same for mma_rows ($MEDUSA_MMA=0: a tree's projections go to cuBLAS)."""
    if enabled is not None:
        _state["mma"] = bool(enabled)
    return _state["mma"]


def mma_rows_ok(a, b, trans_b=False) -> bool:
    """2 to MMA_MAX_ROWS rows of fp16 against an fp16 [K, N] weight of at most MMA_MAX_WEIGHT
    elements, K a multiple of 64 and N of 16."""
    if trans_b or b.ndim != 2 or not (jt.flags.use_cuda and jt.flags.no_grad and use_kernels() and use_mma()):
        return False
    rows = math.prod(a.shape[:-1])
    return (2 <= rows <= MMA_MAX_ROWS and str(a.dtype) == "float16" and str(b.dtype) == "float16"
            and b.shape[0] % 64 == 0 and b.shape[1] % 16 == 0 and b.shape[0] * b.shape[1] <= MMA_MAX_WEIGHT)


def mma_rows(a, b, trans_b=False, bias=None):
    """a [..., K] with 2-64 rows in all, b [K, N] -> a @ b (+ bias) [..., N] in one op: the
    workspace zeroed, the tensor-core product split over K, the fp16 rounding (mma_rows_ok says
    when). The split of K makes about 528 blocks (medusa_k::mma_plan)."""
    assert not trans_b
    rows, N = math.prod(a.shape[:-1]), b.shape[1]
    inputs = [a, b] + ([bias] if bias is not None else [])
    out = jt.code([(*a.shape[:-1], N), (rows, N)], ["float16", "float32"], inputs, cuda_header=_MMA_HEADER,
                  cuda_src=f"""
        medusa_k::launch_mma((const __half*)in0_p, (const __half*)in1_p,
                             {"(const __half*)in2_p" if bias is not None else "nullptr"}, (__half*)out0_p, out1_p,
                             out1_shape0, in1_shape0, in1_shape1);
    """)
    return out[0]


# ---------------------------------------------------------------- a whole decoder layer, a few rows
_ROWS_LAYER_HEADER = _COMMON + _RMS_NORM_BODY + _QKV_ROPE_BODY + _SILU_MUL_BODY + _ATTENTION_BODY + _MMA_BODY


def rows_layer_ok(x, cache, mask, weights, head_dim) -> bool:
    """rows_layer serves x: 2 to MMA_MAX_ROWS fp16 rows (batch 1) over a cache with a mask, every
    weight one mma_rows takes (small ones: this is the path of small models, whose tree step is
    bound by Jittor's cost per op), the shapes cache_attention takes."""
    T = x.shape[1] if x.ndim == 3 else 0
    return (cache is not None and mask is not None and x.ndim == 3 and x.shape[0] == 1 and use_layer_op()
            and use_rows_layer() and all(mma_rows_ok(x, w) for w in weights)
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
    names = [n for n, v in operands.items() if v is not None]
    p = {n: f"in{i}_p" for i, n in enumerate(names)}
    shape = lambda n, i: f"in{names.index(n)}_shape{i}"
    half = lambda n: f"(const __half*){p[n]}" if n in p else "(const __half*)nullptr"
    # qkv | q | attention | o_proj | x + pending | normed | gate_up | SiLU * up, each T rows
    scratch = T * (nqkv + 2 * nqd + 3 * H + 3 * inter)
    first_norm = (f'medusa_k::launch_add_rms_norm({half("x")}, {half("pending")}, {half("in_norm")}, x1, h, T, H, eps);'
                  if pending is not None else
                  f'medusa_k::launch_rms_norm({half("x")}, {half("in_norm")}, h, T, H, eps);')
    out = jt.code([x.shape, x.shape, (scratch,), (T * max(nqkv, H, 2 * inter),)],
                  ["float16", "float16", "float16", "float32"], [operands[n] for n in names],
                  cuda_header=_ROWS_LAYER_HEADER, data={"start": int(start), "eps": float(eps), "scale": float(scale)},
                  cuda_src=f"""
        const int T = {shape("x", 1)}, H = {shape("x", 2)}, Nqkv = {shape("qkv_w", 1)}, NQD = {shape("o_w", 0)};
        const int I = {shape("down_w", 0)}, nkv = {shape("keys", 1)}, L = {shape("keys", 2)}, D = {shape("keys", 3)};
        const int nq = NQD / D, start = (int)data["start"], S = start + T;
        const float eps = (float)data["eps"], scale = (float)data["scale"];
        __half* qkv = (__half*)out2_p; __half* q = qkv + T * Nqkv; __half* attn = q + T * NQD;
        __half* o = attn + T * NQD; __half* x1 = o + T * H; __half* h = x1 + T * H; __half* gu = h + T * H;
        __half* act = gu + T * 2 * I;
        float* ws = out3_p;
        const __half* residual = {"x1" if pending is not None else half("x")};
        {first_norm}
        medusa_k::launch_mma(h, {half("qkv_w")}, {half("qkv_b")}, qkv, ws, T, H, Nqkv);
        medusa_k::launch_qkv_rope<__half>(qkv, {p["cos"]}, {p["sin"]}, {p["pos"]}, q, (__half*){p["keys"]},
                                          (__half*){p["values"]}, 1, T, nq, nkv, D, L, start);
        medusa_k::launch_cache_attention<__half>(q, (__half*){p["keys"]}, (__half*){p["values"]}, {p["mask"]}, attn,
                                                 nq * T, nkv, (nq / nkv) * T, L, D, S, T, scale, 1);
        medusa_k::launch_mma(attn, {half("o_w")}, nullptr, o, ws, T, NQD, H);
        medusa_k::launch_add_rms_norm<__half, __half>(residual, o, {half("post_norm")}, (__half*)out0_p, h, T, H, eps);
        medusa_k::launch_mma(h, {half("gate_up_w")}, nullptr, gu, ws, T, H, 2 * I);
        medusa_k::launch_silu_mul<__half>(gu, act, T, I);
        medusa_k::launch_mma(act, {half("down_w")}, nullptr, (__half*)out1_p, ws, T, I, H);
    """)
    return out[0], out[1]
