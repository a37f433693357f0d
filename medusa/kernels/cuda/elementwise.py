"""RMSNorm (with the residual add), split + RoPE (into the cache), SiLU * up: row-wise kernels."""
from medusa.kernels.cuda.common import _COMMON, _rows
from medusa.runtime.backend import jt

# ---------------------------------------------------------------- RMSNorm
_RMS_NORM_BODY = r"""
namespace medusa_k {
// One block per row: y = x * rsqrt(mean(x^2) + eps) * w, accumulated in fp32; with a residual
// first (d given): h = x + d, rounded to T like the unfused add and written to sum, y = RMSNorm(h) * w.
// rms_norm_vec: 16-byte loads, a thread keeps its NORM_VPT vectors of the row in registers
// between the sum of squares and the scaling (one read of x and d); rows of H % Vec<T>::N != 0
// or longer than blockDim * NORM_VPT vectors go to rms_norm_any (element by element, x and d
// read twice). Measured before rms_norm_vec (H200, Vicuna-7B 64-node tree): add_rms_norm took
// 15 us a launch, 0.96 ms of the step.
constexpr int NORM_VPT = 4;
template <class T, class W>
__global__ void rms_norm_vec(const T* x, const T* d, const W* w, T* sum, T* y, int H, float eps) {
    constexpr int V = Vec<T>::N;
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * H;
    const int nvec = H / V;
    float h[NORM_VPT][V];
    float ss = 0.0f;
    #pragma unroll
    for (int j = 0; j < NORM_VPT; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= nvec) break;
        Vec<T>::load(x + base + (size_t)i * V, h[j]);
        if (d) {
            float e[V];
            Vec<T>::load(d + base + (size_t)i * V, e);
            #pragma unroll
            for (int k = 0; k < V; k++) h[j][k] = f32(from_f32<T>(h[j][k] + e[k]));
            Vec<T>::store(sum + base + (size_t)i * V, h[j]);
        }
        #pragma unroll
        for (int k = 0; k < V; k++) ss += h[j][k] * h[j][k];
    }
    const float inv = rsqrtf(block_reduce(ss, scratch, false) / H + eps);
    #pragma unroll
    for (int j = 0; j < NORM_VPT; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= nvec) break;
        float o[V];
        #pragma unroll
        for (int k = 0; k < V; k++) o[k] = h[j][k] * inv * f32(w[i * V + k]);
        Vec<T>::store(y + base + (size_t)i * V, o);
    }
}
template <class T, class W>
__global__ void rms_norm_any(const T* x, const T* d, const W* w, T* sum, T* y, int H, float eps) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * H;
    auto h = [&](int i) { return d ? f32(from_f32<T>(f32(x[base + i]) + f32(d[base + i]))) : f32(x[base + i]); };
    float ss = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        const float v = h(i);
        if (d) sum[base + i] = from_f32<T>(v);
        ss += v * v;
    }
    const float inv = rsqrtf(block_reduce(ss, scratch, false) / H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x) y[base + i] = from_f32<T>(h(i) * inv * f32(w[i]));
}
// host-side launches, shared by the single ops and the layer ops (the same kernel and blockDim
// for the same H, so the same summation order and bit-identical results)
template <class T, class W>
inline void launch_add_rms_norm(const T* x, const T* d, const W* w, T* sum, T* y, size_t rows, int H, float eps) {
    constexpr int V = Vec<T>::N;
    const int nvec = H / V, threads = ((nvec + NORM_VPT - 1) / NORM_VPT + 31) / 32 * 32;
    if (H % V == 0 && threads <= 1024)
        rms_norm_vec<<<rows, threads < 32 ? 32 : threads>>>(x, d, w, sum, y, H, eps);
    else
        rms_norm_any<<<rows, H >= 1024 ? 1024 : (H + 31) / 32 * 32>>>(x, d, w, sum, y, H, eps);
}
template <class T, class W>
inline void launch_rms_norm(const T* x, const W* w, T* y, size_t rows, int H, float eps) {
    launch_add_rms_norm<T, W>(x, nullptr, w, nullptr, y, rows, H, eps);
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
// length otherwise). cos/sin: tables [P, D] (fp32), positions [B, T] int32. One thread per pair
// (d, d + D/2) of a head, 32-bit index math (64-bit divisions per element made it 21 us a
// launch on a 64-row Vicuna-7B tree).
template <class T>
__global__ void qkv_rope(const T* qkv, const float* cos_t, const float* sin_t, const int* pos,
                         T* q, T* k, T* v, int B, int Tn, int nq, int nkv, int D, int L, int start) {
    const int heads = nq + 2 * nkv, half = D / 2;
    const int total = B * Tn * heads * half;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int d = i % half, row = i / half;        // row: (b, t, head)
        const int h = row % heads, bt = row / heads;
        const int t = bt % Tn, b = bt / Tn;
        const size_t src = (size_t)row * D + d;
        if (h >= nq + nkv) {                                   // v: layout only
            T* o = v + (((size_t)b * nkv + (h - nq - nkv)) * L + start + t) * D + d;
            o[0] = qkv[src];
            o[half] = qkv[src + half];
            continue;
        }
        const float x1 = f32(qkv[src]), x2 = f32(qkv[src + half]);
        const size_t p = (size_t)pos[bt] * D + d;
        const float r1 = x1 * cos_t[p] + (-x2) * sin_t[p];
        const float r2 = x2 * cos_t[p + half] + x1 * sin_t[p + half];
        T* o = h < nq ? q + (((size_t)b * nq + h) * Tn + t) * D + d
                      : k + (((size_t)b * nkv + (h - nq)) * L + start + t) * D + d;
        o[0] = from_f32<T>(r1);
        o[half] = from_f32<T>(r2);
    }
}
template <class T>
inline void launch_qkv_rope(const T* qkv, const float* cos_t, const float* sin_t, const int* pos, T* q, T* k, T* v,
                            int B, int Tn, int nq, int nkv, int D, int L, int start) {
    qkv_rope<<<grid_of((size_t)B * Tn * (nq + 2 * nkv) * (D / 2)), 256>>>(qkv, cos_t, sin_t, pos, q, k, v, B, Tn, nq,
                                                                          nkv, D, L, start);
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
// y [rows, I] = SiLU(gu[:, :I]) * gu[:, I:]: rows over gridDim.y, 16-byte vectors of a row over
// x where I % Vec<T>::N == 0 (VEC), else one element a thread; 32-bit index math within a row.
template <class T, bool VEC>
__global__ void silu_mul(const T* gu, T* y, int rows, int I) {
    constexpr int V = VEC ? Vec<T>::N : 1;
    const int n = I / V;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const T* g_row = gu + (size_t)r * 2 * I;
        T* y_row = y + (size_t)r * I;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < n; c += gridDim.x * blockDim.x) {
            float g[V], u[V], o[V];
            if (VEC) { Vec<T>::load(g_row + c * V, g); Vec<T>::load(g_row + I + c * V, u); }
            else { g[0] = f32(g_row[c]); u[0] = f32(g_row[I + c]); }
            #pragma unroll
            for (int j = 0; j < V; j++) o[j] = g[j] / (1.0f + __expf(-g[j])) * u[j];
            if (VEC) Vec<T>::store(y_row + c * V, o);
            else y_row[c] = from_f32<T>(o[0]);
        }
    }
}
template <class T>
inline void launch_silu_mul(const T* gu, T* y, size_t rows, int I) {
    const bool vec = I % Vec<T>::N == 0;
    const int n = vec ? I / Vec<T>::N : I, bx = (n + 255) / 256;
    const dim3 grid(bx > 64 ? 64 : bx, rows < 65535 ? (unsigned)rows : 65535u);
    if (vec) silu_mul<T, true><<<grid, 256>>>(gu, y, (int)rows, I);
    else silu_mul<T, false><<<grid, 256>>>(gu, y, (int)rows, I);
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
