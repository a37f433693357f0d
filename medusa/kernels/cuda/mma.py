"""A few rows times a weight on the tensor cores (a tree's projections of a small model)."""
import math

from medusa.kernels.cuda.common import _COMMON, _rows
from medusa.kernels.cuda.switches import use_kernels, use_mma
from medusa.runtime.backend import jt

# ---------------------------------------------------------------- a few rows times a weight (tensor cores)
MMA_MAX_ROWS = 64              # rows of x one launch serves (four 16-row tiles)
# 2-64 rows through mma_rows only against weights of at most this many elements: measured on the
# H200 (December), a SmolLM2-shaped 64-node tree step took 8.2 ms with it and 9.4 with cuBLAS,
# a Vicuna-7B-shaped one 23.0 ms with it and 10.0 with cuBLAS (its weights are 17-90M elements:
# there the product is bound by streaming the weight, which cuBLAS does better)
MMA_MAX_WEIGHT = 1 << 23
MMA_TARGET_BLOCKS = 528        # blocks a launch aims for (mma_plan in _MMA_BODY reads it)

_MMA_BODY = r"""
#include <mma.h>
namespace medusa_k {
// y [M, N] = x [M, K] @ w [K, N], fp16 in, fp32 accumulation, M <= 64: a tree verification's
// projections. cuBLAS picks kernels for large M; at M <= 64 the product is bound by streaming
// w, so every weight tile is read once and applied to all M rows on the tensor cores (wmma
// 16x16x16). A block: 4 warps x 32 columns, one slice of K (split K: gridDim.y slices, each
// slice's partial sums stored in its own part of the fp32 workspace ws [slices, M, N]); x's
// 64 x 64 chunks are staged in shared memory (rows >= M are zeros); then mma_finish adds the
// slices in order and rounds to fp16 (+ bias). No atomics: the same inputs give the same bits
// in every run, and a row's result does not depend on the other rows (nor on M), since the
// split of K depends on K and N alone (mma_plan).
constexpr int MMA_KC = 64, MMA_LD = MMA_KC + 8, MMA_TARGET_BLOCKS = @TARGET@;   // 4 per SM of an H100/H200
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
                if (r < M) ws[((size_t)blockIdx.y * M + r) * N + c] = tile[warp][i];
            }
            __syncwarp();
        }
}
__global__ void mma_finish(const float* ws, const __half* bias, __half* y, int M, int N, int splits) {
    const size_t total = (size_t)M * N;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float s = ws[i];
        for (int k = 1; k < splits; k++) s += ws[k * total + i];
        const __half r = __float2half(s);
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
// y = x @ w (+ bias): the split product into the workspace ws [splits, M, N] fp32 (the Python
// side sizes it: mma_workspace), the slices' sum and the rounding
inline void launch_mma(const __half* x, const __half* w, const __half* bias, __half* y, float* ws, int M, int K, int N) {
    int splits, k_slice;
    mma_plan(K, N, &splits, &k_slice);
    mma_rows<<<dim3((N + 127) / 128, splits), 128>>>(x, w, ws, M, K, N, k_slice);
    mma_finish<<<grid_of((size_t)M * N), 256>>>(ws, bias, y, M, N, splits);
}
}  // namespace medusa_k
""".replace("@TARGET@", str(MMA_TARGET_BLOCKS))
_MMA_HEADER = _COMMON + _MMA_BODY

def mma_splits(K, N) -> int:
    """The slices of K one mma_rows launch makes (medusa_k::mma_plan, which it mirrors)."""
    col_blocks, chunks = -(-N // 128), K // 64
    s = max(1, min(-(-MMA_TARGET_BLOCKS // col_blocks), chunks))
    k_slice = 64 * -(-chunks // s)
    return -(-K // k_slice)



def mma_workspace(rows, K, N) -> int:
    """fp32 elements of mma_rows' workspace for rows x [K, N]: one [rows, N] part per slice."""
    return mma_splits(K, N) * rows * N


def mma_rows_ok(a, b, trans_b=False, exact=False) -> bool:
    """2 to MMA_MAX_ROWS rows of fp16 against an fp16 [K, N] weight of at most MMA_MAX_WEIGHT
    elements, K a multiple of 64 and N of 16. `exact` (the exact option's `tree` mode): also one
    row and any weight size, so that a decode step and a tree's rows take the same kernel."""
    if trans_b or b.ndim != 2 or not (jt.flags.use_cuda and jt.flags.no_grad and use_kernels() and use_mma()):
        return False
    rows = math.prod(a.shape[:-1])
    return ((1 if exact else 2) <= rows <= MMA_MAX_ROWS and str(a.dtype) == "float16" and str(b.dtype) == "float16"
            and b.shape[0] % 64 == 0 and b.shape[1] % 16 == 0
            and (exact or b.shape[0] * b.shape[1] <= MMA_MAX_WEIGHT))


def mma_rows(a, b, trans_b=False, bias=None):
    """a [..., K] with 1-64 rows in all, b [K, N] -> a @ b (+ bias) [..., N] in one op: the
    tensor-core product split over K, the slices added in order, the fp16 rounding (mma_rows_ok
    says when). The split of K makes about 528 blocks (medusa_k::mma_plan)."""
    assert not trans_b
    rows, K, N = math.prod(a.shape[:-1]), b.shape[0], b.shape[1]
    inputs = [a, b] + ([bias] if bias is not None else [])
    out = jt.code([(*a.shape[:-1], N), (mma_workspace(rows, K, N),)], ["float16", "float32"], inputs,
                  cuda_header=_MMA_HEADER,
                  cuda_src=f"""
        medusa_k::launch_mma((const __half*)in0_p, (const __half*)in1_p,
                             {"(const __half*)in2_p" if bias is not None else "nullptr"}, (__half*)out0_p, out1_p,
                             {_rows("in0", a.ndim)}, in1_shape0, in1_shape1);
    """)
    return out[0]
