"""RMSNorm (with the residual add), split + RoPE (into the cache), SiLU * up: row-wise kernels."""
from medusa.cuda_kernels.common import _COMMON, _rows
from medusa.runtime import jt


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
    silu_mul<<<grid_of(rows * I), 256>>>(gu, y, rows, I);
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
