"""Fused CUDA kernels for the GPU decode step, each beside its plain-Jittor reference.

Why: at batch 1 a Jittor step is host-bound. Every Python-level Jittor op costs ~6-7 us of host
time to build, and one decoder layer written with plain ops is ~45 of them (the norms' casts and
reductions, rotate_half's slices and concat, the transposes, the softmax pieces). These kernels
make a layer ~13 ops: two matmuls fewer (fused q/k/v and gate/up weights, model.fuse_projections)
and one op for each of

    y = rms_norm(x, weight, eps)                      # [..., H], fp32 accumulation
    h, y = add_rms_norm(x, delta, weight, eps)        # the residual add and the next norm
    q, k, v = qkv_rope(qkv, cos, sin, positions, nq, nkv, d)  # split the fused projection,
                                                      # RoPE on q and k, heads-major layout
    h = silu_mul(gate_up)                             # SiLU(gate) * up of [..., 2I] -> [..., I]
    y = gemv(x, w)                                    # one row @ [K, N]: the decode step's matmuls
    o = cache_attention(q, keys, values, length, mask, scale)  # softmax(q k^T s + mask) v over
                                                      # the first `length` cache positions

`jt.code` kernels are keyed on dtypes and ranks, not shapes (Jittor's code_op.cc), and the
lengths they read come through `data`, so a growing cache never recompiles them. The
`reference_*` functions (model.attention for cache_attention, Jittor's matmul for gemv)
compute the same with Jittor's ops: they are the path everywhere else and what tests/test_gpu.py
compares against on the device. `model.gpu_kernels_ok` and the `*_ok` functions say when a
kernel applies (CUDA, no gradient, the shapes it was written for).

Reference: the kernels of gpt-fast / vLLM-style decoding (one block per row for the norm, one
block per query row for attention over the cache, a thread per key position).
"""
import math
import os

from medusa.runtime import jt

_state = {"enabled": os.environ.get("MEDUSA_CUDA_KERNELS", "1") != "0",
          "gemv": os.environ.get("MEDUSA_GEMV", "1") != "0"}


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
_RMS_NORM_HEADER = _COMMON + r"""
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
}  // namespace medusa_k
"""


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
        const int H = in0_shape{x.ndim - 1};
        const int threads = H >= 1024 ? 1024 : (H + 31) / 32 * 32;
        medusa_k::rms_norm<<<{_rows("in0", x.ndim)}, threads>>>(in0_p, in1_p, out0_p, H, (float)data["eps"]);
    """)


def reference_add_rms_norm(x, delta, weight, eps):
    h = x + delta
    return h, reference_rms_norm(h, weight, eps)


def add_rms_norm(x, delta, weight, eps):
    """(x + delta, RMSNorm(x + delta) * weight) in one kernel: a decoder layer's residual add
    and the norm after it."""
    return jt.code([x.shape, x.shape], [x.dtype, x.dtype], [x, delta, weight], cuda_header=_RMS_NORM_HEADER,
                   data={"eps": float(eps)}, cuda_src=f"""
        const int H = in0_shape{x.ndim - 1};
        const int threads = H >= 1024 ? 1024 : (H + 31) / 32 * 32;
        medusa_k::add_rms_norm<<<{_rows("in0", x.ndim)}, threads>>>(in0_p, in1_p, in2_p, out0_p, out1_p, H,
                                                                     (float)data["eps"]);
    """)


# ---------------------------------------------------------------- split + RoPE
_QKV_ROPE_HEADER = _COMMON + r"""
namespace medusa_k {
// qkv [B, T, (nq + 2 nkv) D] -> q [B, nq, T, D], k [B, nkv, T, D] (both rotated), v [B, nkv, T, D].
// cos/sin: tables [P, D] (fp32), positions [B, T] int32. One thread per output element of a head.
template <class T>
__global__ void qkv_rope(const T* qkv, const float* cos_t, const float* sin_t, const int* pos,
                         T* q, T* k, T* v, int B, int Tn, int nq, int nkv, int D) {
    const int heads = nq + 2 * nkv;
    const size_t total = (size_t)B * Tn * heads * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int d = i % D;
        const int h = (i / D) % heads;
        const int t = (i / ((size_t)D * heads)) % Tn;
        const int b = i / ((size_t)D * heads * Tn);
        const float x = f32(qkv[i]);
        if (h >= nq + nkv) {                                   // v: layout only
            v[(((size_t)b * nkv + (h - nq - nkv)) * Tn + t) * D + d] = qkv[i];
            continue;
        }
        const int half = D / 2;
        const float other = f32(qkv[d < half ? i + half : i - half]);
        const size_t p = (size_t)pos[b * Tn + t] * D + d;
        const float r = x * cos_t[p] + (d < half ? -other : other) * sin_t[p];
        if (h < nq) q[(((size_t)b * nq + h) * Tn + t) * D + d] = from_f32<T>(r);
        else        k[(((size_t)b * nkv + (h - nq)) * Tn + t) * D + d] = from_f32<T>(r);
    }
}
}  // namespace medusa_k
"""


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


def qkv_rope(qkv, cos, sin, positions, nq, nkv, d):
    """qkv [B, T, (nq + 2 nkv) d] (the fused projection's output), cos/sin fp32 tables [P, d],
    positions int32 [B, T] -> q [B, nq, T, d], k, v [B, nkv, T, d]: split, heads-major, RoPE on
    q and k (fp32 math). Replaces three reshapes, three transposes, two table lookups and the
    rotate_half arithmetic."""
    B, T, _ = qkv.shape
    shapes = [(B, nq, T, d), (B, nkv, T, d), (B, nkv, T, d)]
    return jt.code(shapes, [qkv.dtype] * 3, [qkv, cos, sin, positions], cuda_header=_QKV_ROPE_HEADER,
                   data={"nq": nq, "nkv": nkv}, cuda_src="""
        const size_t total = (size_t)in0_shape0 * in0_shape1 * in0_shape2;
        const int blocks = (int)(total < 4096 * 256 ? (total + 255) / 256 : 4096);
        medusa_k::qkv_rope<<<blocks, 256>>>(in0_p, in1_p, in2_p, in3_p, out0_p, out1_p, out2_p,
            in0_shape0, in0_shape1, (int)data["nq"], (int)data["nkv"], out0_shape3);
    """)


# ---------------------------------------------------------------- SiLU(gate) * up
_SILU_MUL_HEADER = _COMMON + r"""
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
}  // namespace medusa_k
"""


def reference_silu_mul(gate_up):
    I = gate_up.shape[-1] // 2
    return jt.nn.silu(gate_up[..., :I]) * gate_up[..., I:]


def silu_mul(gate_up):
    """gate_up [..., 2I] (the fused gate/up projection) -> SiLU(gate) * up [..., I]."""
    I = gate_up.shape[-1] // 2
    return jt.code((*gate_up.shape[:-1], I), gate_up.dtype, [gate_up], cuda_header=_SILU_MUL_HEADER, cuda_src=f"""
        const size_t rows = {_rows("in0", gate_up.ndim)}, total = rows * out0_shape{gate_up.ndim - 1};
        const int blocks = (int)(total < 4096 * 256 ? (total + 255) / 256 : 4096);
        medusa_k::silu_mul<<<blocks, 256>>>(in0_p, out0_p, rows, out0_shape{gate_up.ndim - 1});
    """)


# ---------------------------------------------------------------- one row times a weight
_GEMV_HEADER = _COMMON + r"""
namespace medusa_k {
// y [N] = x [K] @ w [K, N] (row-major, the Linear layout): a block covers 4 x 16-byte column
// groups and 64 slices of K; every thread streams its slice of rows with 16-byte loads, partial
// sums meet in shared memory. At batch 1 this is the whole matmul cost of a decode step.
template <class T>
__global__ void gemv(const T* x, const T* w, T* y, int K, int N) {
    constexpr int V = Vec<T>::N, GROUPS = 4, SLICES = 64;          // blockDim = GROUPS * SLICES
    __shared__ float part[SLICES][GROUPS * V];
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
            const float xk = f32(x[k]);
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
            float sum = 0.0f;
            for (int t = 0; t < SLICES; t++) sum += part[t][i];
            y[c] = from_f32<T>(sum);
        }
    }
}
}  // namespace medusa_k
"""


def gemv_ok(a, b, trans_b=False) -> bool:
    """One row against a [K, N] weight (the decode step's projections), N a multiple of 8."""
    return (bool(jt.flags.use_cuda and jt.flags.no_grad) and use_kernels() and use_gemv() and not trans_b
            and b.ndim == 2
            and math.prod(a.shape[:-1]) == 1 and b.shape[1] % 8 == 0 and str(a.dtype) == str(b.dtype)
            and str(a.dtype) in ("float16", "float32"))


def gemv(a, b, trans_b=False):
    """a [..., K] with one row in all, b [K, N] -> a @ b [..., N] (gemv_ok says when)."""
    assert not trans_b
    cols = 4 * (8 if str(a.dtype) == "float16" else 4)              # columns per block
    return jt.code((*a.shape[:-1], b.shape[1]), a.dtype, [a, b], cuda_header=_GEMV_HEADER, cuda_src=f"""
        const int K = in1_shape0, N = in1_shape1;
        medusa_k::gemv<<<(N + {cols - 1}) / {cols}, 256>>>(in0_p, in1_p, out0_p, K, N);
    """)


# ---------------------------------------------------------------- attention over the cache
_ATTENTION_HEADER = _COMMON + r"""
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
}  // namespace medusa_k
"""


def cache_attention_ok(q, length) -> bool:
    """The shapes cache_attention serves: up to MAX_ATTENTION_KEYS keys (its scores live in shared
    memory), head_dim a multiple of 8 up to MAX_HEAD_DIM (16-byte loads), fp16 or fp32."""
    D = q.shape[-1]
    return bool(jt.flags.use_cuda) and length <= MAX_ATTENTION_KEYS and D <= MAX_HEAD_DIM and D % 8 == 0 \
        and str(q.dtype) in ("float16", "float32")


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
        const int S = (int)data["S"], threads = 256, shared = 4 * (in0_shape3 + S + 32 + threads * 8);
        if (shared > 48 * 1024)
            cudaFuncSetAttribute(medusa_k::cache_attention<in0_type>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
        medusa_k::cache_attention<<<in0_shape0 * in0_shape1 * in0_shape2, threads, shared>>>(
            in0_p, in1_p, in2_p, {mask_p}, out0_p, in0_shape1, in0_shape2, in1_shape2, in0_shape3,
            S, (int)data["T"], {int(mask is not None)}, (float)data["scale"], {int(tokens_major)});
    """)
