"""One row times a weight: gemv, with the norm (norm_gemv) or SiLU * up (silu_gemv) fused in."""
import math

from medusa.kernels.cuda.common import _COMMON, _rows
from medusa.kernels.cuda.elementwise import reference_rms_norm, reference_silu_mul
from medusa.kernels.cuda.switches import use_gemv, use_kernels
from medusa.runtime.backend import jt

# ---------------------------------------------------------------- one row times a weight
_GEMV_BODY = r"""
namespace medusa_k {
// y [N] = x [K] @ w [K, N] (row-major, the Linear layout), with x one of
//   PLAIN: a row x;
//   NORM:  RMSNorm(x (+ d)) * nw, the residual add and the norm before a projection; block 0
//          also writes the sum x + d (the new residual) when d is given;
//   SILU:  SiLU(gu[k]) * gu[K + k] of the fused gate/up projection's output gu [2K].
// Each element of x is rounded to T as the unfused ops would store it. A block covers 4 x
// 16-byte column groups (64 contiguous bytes of each weight row in fp16) and SLICES slices of K;
// every thread streams its slice of rows (unrolled by 4; 8 loads in flight per thread made the
// Vicuna-7B step 1.6x slower: fewer warps fit). Partial sums meet by warp shuffles, then in
// shared memory. The launch picks SLICES (64, 128 or 256) so that the grid fills the GPU: with
// 64 slices a 4096-column weight was 128 blocks of 8 warps, one block an SM, which read the
// Vicuna-7B o_proj/down weights at ~1.0 TB/s. At batch 1 this is the whole matmul cost of a
// decode step. NORM keeps the normed row in dynamic shared memory (K floats).
// Several rows: gridDim.y rows, one a block row, each computed exactly as a lone row (the block
// shape depends on K and N only), so a tree's row and a decode step's row give the same bits
// (the exact option's `decode` mode); the weight is read once a row (from L2 for small ones).
enum { PLAIN = 0, NORM = 1, SILU = 2 };
template <class T, int MODE, int SLICES>
__global__ void __launch_bounds__(SLICES * 4) gemv(const T* x, const T* d, const T* nw, const T* w,
                                                   const T* bias, T* y, T* sum, int K, int N, float eps) {
    constexpr int V = Vec<T>::N, GROUPS = 4, WARPS = SLICES * GROUPS / 32;   // blockDim = GROUPS * SLICES
    __shared__ float part[WARPS][GROUPS * V];
    extern __shared__ float xs[];
    const size_t row = blockIdx.y;
    x += row * (MODE == SILU ? 2 * K : K);
    if (d) d += row * K;
    if (sum) sum += row * K;
    y += row * N;
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
    // the 8 slices of a warp that share a column group: lanes g, g + 4, ..., g + 28
    #pragma unroll
    for (int j = 0; j < V; j++)
        for (int o = GROUPS; o < 32; o <<= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane < GROUPS) {
        #pragma unroll
        for (int j = 0; j < V; j++) part[warp][lane * V + j] = acc[j];
    }
    __syncthreads();
    if (threadIdx.x < GROUPS * V) {
        const int c = blockIdx.x * GROUPS * V + threadIdx.x;
        if (c < N) {
            float s = 0.0f;
            #pragma unroll 8
            for (int t = 0; t < WARPS; t++) s += part[t][threadIdx.x];
            y[c] = bias ? from_f32<T>(f32(from_f32<T>(s)) + f32(bias[c])) : from_f32<T>(s);
        }
    }
}
template <class T, int MODE, int SLICES>
inline void launch_gemv_with(int blocks, int rows, const T* x, const T* d, const T* nw, const T* w, const T* bias,
                             T* y, T* sum, int K, int N, float eps) {
    const int shared = MODE == NORM ? 4 * K : 0;
    if (shared > 48 * 1024)
        cudaFuncSetAttribute(gemv<T, MODE, SLICES>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
    gemv<T, MODE, SLICES><<<dim3(blocks, rows), SLICES * 4, shared>>>(x, d, nw, w, bias, y, sum, K, N, eps);
}
// host-side launch, shared by the gemv ops and decode_layer: (4 x 16-byte column groups) per
// block, and as many slices of K as keep one row's grid resident at once (2048 threads an SM);
// `rows` rows of x, each as if alone
template <class T, int MODE>
inline void launch_gemv(const T* x, const T* d, const T* nw, const T* w, const T* bias, T* y, T* sum,
                        int K, int N, float eps, int rows = 1) {
    static int sms = 0;
    if (!sms) {
        int dev = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
        if (sms <= 0) sms = 132;
    }
    constexpr int COLS = 4 * Vec<T>::N;
    const int blocks = (N + COLS - 1) / COLS;
    const long resident = 2048L * sms;
    if ((long)blocks * 1024 <= resident)
        launch_gemv_with<T, MODE, 256>(blocks, rows, x, d, nw, w, bias, y, sum, K, N, eps);
    else if ((long)blocks * 512 <= resident)
        launch_gemv_with<T, MODE, 128>(blocks, rows, x, d, nw, w, bias, y, sum, K, N, eps);
    else launch_gemv_with<T, MODE, 64>(blocks, rows, x, d, nw, w, bias, y, sum, K, N, eps);
}
}  // namespace medusa_k
"""
_GEMV_HEADER = _COMMON + _GEMV_BODY

MAX_NORM_GEMV_K = 8192         # the normed row lives in shared memory (32 KB) beside 4 KB of partial sums


def _one_row_ok(a, b) -> bool:
    return gemv_rows_ok(a, b) and math.prod(a.shape[:-1]) == 1


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
    x = operands["x"]
    shapes = [out_shape] + ([sum_shape] if sum_shape else [])
    w = names.index("w")
    out = jt.code(shapes, [x.dtype] * len(shapes), [operands[n] for n in names], cuda_header=_GEMV_HEADER,
                  data={"eps": float(eps)}, cuda_src=f"""
        medusa_k::launch_gemv<in0_type, medusa_k::{mode}>({ptr("x")}, {ptr("d")}, {ptr("nw")}, {ptr("w")},
            {ptr("bias")}, out0_p, {"out1_p" if sum_shape else "(in0_type*)nullptr"}, in{w}_shape0, in{w}_shape1,
            (float)data["eps"], {_rows("in0", x.ndim)});
    """)
    return out if sum_shape else out[0]


def gemv_rows_ok(a, b) -> bool:
    """gemv serves a with several rows (the exact option's `decode` mode: each row as if alone)."""
    return (bool(jt.flags.use_cuda and jt.flags.no_grad) and use_kernels() and use_gemv() and b.ndim == 2
            and b.shape[1] % 8 == 0 and str(a.dtype) == str(b.dtype) and str(a.dtype) in ("float16", "float32"))


def gemv(a, b, trans_b=False):
    """a [..., K], b [K, N] -> a @ b [..., N]: one row (gemv_ok says when), or several rows,
    each computed as a lone row would be (gemv_rows_ok)."""
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
