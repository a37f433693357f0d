"""Attention over the KV cache: decode and tree verification, GQA, fp32 softmax."""
from medusa.kernels.cuda.common import _COMMON
from medusa.kernels.cuda.switches import use_tree_attention
from medusa.runtime.backend import jt

MAX_ATTENTION_KEYS = 8192      # the scores of one query row live in shared memory (with the rest up to 75 KB)
MAX_HEAD_DIM = 256


# ---------------------------------------------------------------- attention over the cache
_ATTENTION_BODY = r"""
#include <mma.h>
namespace medusa_k {
// One block per query row. q [B, Hkv, R, D] (the G query heads of a kv head folded into rows,
// head-major: row = g * T + t), keys/values: the whole cache [B, Hkv, L, D], of which the first
// S positions are read; mask [B, T, S] additive fp32 (has_mask) or none (every key visible).
// Scores: a thread per key position, 16-byte loads over D; fp32 softmax in shared memory; the
// value sum: D / N threads per key (N elements each, 16-byte loads), blockDim / (D / N) keys at
// once, partial sums combined in shared memory. D must be a multiple of 8.
// Keys are visited in logical order: the cache's first S - Tn positions, then those of the Tn
// new ones the row's mask leaves visible (mask > MASKED), in order. A masked key adds exactly 0
// to every sum, so this is the same attention; but the reduction order then depends only on the
// keys the row sees, not on where they sit in the cache, and a tree node's row is computed with
// the same order as the one-token decode step of the same token after its accepted ancestors
// (the exact option, medusa/runtime/options.py).
// tokens_major: out is [B, T, Hq * D] (query head = kv head * G + g), ready for o_proj; else
// it has q's layout.
// A mask value at or below this hides its key: exp(score + mask - max) is exactly 0 in fp32
// (the masks of this project write -1e9 there, medusa/model/transformer.py NEG_INF)
constexpr float MASKED = -1e8f;
// The positions (0..n-1) of the entries of mask[0..n) above MASKED, in order, into visible[];
// returns how many. The whole block calls it (blockDim a multiple of 32); counts: >= 32 ints.
__device__ int visible_keys(const float* mask, int n, int* visible, int* counts) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int found = 0;
    for (int j0 = 0; j0 < n; j0 += blockDim.x) {
        const int j = j0 + threadIdx.x;
        const bool keep = j < n && mask[j] > MASKED;
        const unsigned ballot = __ballot_sync(0xffffffffu, keep);
        __syncthreads();                            // counts is free again
        if (lane == 0) counts[warp] = __popc(ballot);
        __syncthreads();
        int before = found, total = found;
        for (int w = 0; w < warps; w++) {
            if (w < warp) before += counts[w];
            total += counts[w];
        }
        if (keep) visible[before + __popc(ballot & ((1u << lane) - 1u))] = j;
        found = total;
    }
    return found;
}
template <class T>
__global__ void cache_attention(const T* q, const T* keys, const T* values, const float* mask, T* out,
                                int Hkv, int R, int L, int D, int S, int Tn, int has_mask, float scale,
                                int tokens_major) {
    constexpr int N = Vec<T>::N;
    extern __shared__ float smem[];   // [D] query | [S] scores | [32] scratch | [blockDim * N] partials | [Tn] new keys
    float* qs = smem;
    float* sc = qs + D;
    float* scratch = sc + S;
    float* part = scratch + 32;
    int* visible = reinterpret_cast<int*>(part + blockDim.x * N);
    const int row = blockIdx.x % R, bh = blockIdx.x / R, b = bh / Hkv;
    const int t = row % Tn;
    const T* qrow = q + (size_t)blockIdx.x * D;
    const T* kbase = keys + (size_t)bh * L * D;
    const T* vbase = values + (size_t)bh * L * D;
    const float* mrow = has_mask ? mask + ((size_t)b * Tn + t) * S : nullptr;
    const int G = R / Tn, head = (bh % Hkv) * G + row / Tn;
    T* orow = out + (tokens_major ? (((size_t)b * Tn + t) * Hkv * G + head) * D : (size_t)blockIdx.x * D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = f32(qrow[i]) * scale;
    const int start = S - Tn;                       // keys before the new ones: always in order
    const int shown = mrow ? visible_keys(mrow + start, Tn, visible, reinterpret_cast<int*>(scratch)) : 0;
    // a row that sees no key at all (a left-padded prompt's pad rows) keeps the old reading of
    // every key, all masked: a finite uniform mix instead of 0 / 0
    const bool compact = mrow && start + shown > 0;
    const int seen = compact ? start + shown : S;
    __syncthreads();
    // logical key s -> its cache position
    auto at = [&](int s) { return s < start || !compact ? s : start + visible[s - start]; };
    float m = -INFINITY;
    for (int s = threadIdx.x; s < seen; s += blockDim.x) {
        const int pos = at(s);
        const T* krow = kbase + (size_t)pos * D;
        float acc = 0.0f, k8[N];
        for (int i = 0; i < D; i += N) {
            Vec<T>::load(krow + i, k8);
            #pragma unroll
            for (int j = 0; j < N; j++) acc += qs[i + j] * k8[j];
        }
        acc += mrow ? mrow[pos] : 0.0f;
        sc[s] = acc;
        m = fmaxf(m, acc);
    }
    m = block_reduce(m, scratch, true);
    float z = 0.0f;
    for (int s = threadIdx.x; s < seen; s += blockDim.x) { const float e = __expf(sc[s] - m); sc[s] = e; z += e; }
    z = block_reduce(z, scratch, false);
    __syncthreads();                                // every e in sc is written
    const int chunks = D / N, groups = blockDim.x / chunks;
    const int g = threadIdx.x / chunks, c = threadIdx.x % chunks;
    if (g < groups) {
        float acc[N], v8[N];
        #pragma unroll
        for (int j = 0; j < N; j++) acc[j] = 0.0f;
        for (int s = g; s < seen; s += groups) {
            Vec<T>::load(vbase + (size_t)at(s) * D + c * N, v8);
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
// Several query rows at once (tree verification), flash-decoding style on the tensor cores:
// a block takes one kv head, FT_ROWS (64) query rows of it and FT_KEYS (64) keys of the cache;
// it stages the keys and values once in shared memory for all its rows (the per-row kernel
// reads the whole cache once per row: 2.0 ms of a Vicuna-7B 64-node tree step, H200), computes
// the scores Q K^T with wmma, their softmax over its keys (fp32: the chunk's max m and sum l
// per row, P rounded to fp16 as flash attention does) and P V with wmma into fp32 partials;
// flash_tree_combine then merges the chunks per row: sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c.
// fp16 only, D = 64 or 128; the launcher falls back to cache_attention elsewhere. Workspace:
// o [Z, chunks, RT * 64, D] and ml [Z, chunks, RT * 64, 2] floats (Z = B * Hkv, RT row tiles).
constexpr int FT_ROWS = 64, FT_KEYS = 64, FT_MAX_KEYS = 2048;
template <int D>
__global__ void __launch_bounds__(128) flash_tree(const __half* q, const __half* keys, const __half* values,
                                                  const float* mask, float* ws_o, float* ws_ml, int Hkv, int R, int L,
                                                  int S, int Tn, float scale) {
    using namespace nvcuda;
    constexpr int LD = D + 8, LS = FT_KEYS + 4, LP = FT_KEYS + 8;
    extern __shared__ __align__(128) unsigned char ft_smem[];
    __half* qs = reinterpret_cast<__half*>(ft_smem);          // [64][LD]
    __half* ks = qs + FT_ROWS * LD;                            // [64][LD]
    __half* vs = ks + FT_KEYS * LD;                            // [64][LD]
    float* sc = reinterpret_cast<float*>(vs + FT_KEYS * LD);   // [64][LS]
    __half* ps = reinterpret_cast<__half*>(sc + FT_ROWS * LS); // [64][LP]
    const int chunk = blockIdx.x, tile = blockIdx.y, z = blockIdx.z, chunks = gridDim.x, tiles = gridDim.y;
    const int r0 = tile * FT_ROWS, s0 = chunk * FT_KEYS, b = z / Hkv;
    const __half* qz = q + (size_t)z * R * D;
    const __half* kz = keys + (size_t)z * L * D;
    const __half* vz = values + (size_t)z * L * D;
    #pragma unroll
    for (int i = threadIdx.x; i < FT_ROWS * D / 8; i += 128) {              // 128 threads a block
        const int r = i / (D / 8), c = (i % (D / 8)) * 8;
        const uint4 zero = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(qs + r * LD + c) =
            r0 + r < R ? *reinterpret_cast<const uint4*>(qz + (size_t)(r0 + r) * D + c) : zero;
        const bool key = s0 + r < S;
        *reinterpret_cast<uint4*>(ks + r * LD + c) = key ? *reinterpret_cast<const uint4*>(kz + (size_t)(s0 + r) * D + c) : zero;
        *reinterpret_cast<uint4*>(vs + r * LD + c) = key ? *reinterpret_cast<const uint4*>(vz + (size_t)(s0 + r) * D + c) : zero;
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, m0 = warp * 16;   // a warp: 16 rows
    #pragma unroll
    for (int j = 0; j < FT_KEYS / 16; j++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kt;   // K^T
            wmma::load_matrix_sync(a, qs + m0 * LD + kk * 16, LD);
            wmma::load_matrix_sync(kt, ks + (j * 16) * LD + kk * 16, LD);
            wmma::mma_sync(acc, a, kt, acc);
        }
        wmma::store_matrix_sync(sc + m0 * LS + j * 16, acc, LS, wmma::mem_row_major);
    }
    __syncwarp();
    // the scaled, masked scores of the warp's 16 rows (lane: keys lane and lane + 32) first: the
    // mask loads are independent, so they cost one latency rather than one a row
    float v[16][2];
    #pragma unroll
    for (int i = 0; i < 16; i++) {
        const float* mrow = mask + ((size_t)b * Tn + (r0 + m0 + i) % Tn) * S;
        #pragma unroll
        for (int h = 0; h < 2; h++) {
            const int k = lane + 32 * h, s = s0 + k;
            v[i][h] = s < S ? sc[(m0 + i) * LS + k] * scale + mrow[s] : -INFINITY;
        }
    }
    #pragma unroll
    for (int i = 0; i < 16; i++) {
        const int r = m0 + i;
        const float m = warp_max(fmaxf(v[i][0], v[i][1]));
        float e[2], l = 0.0f;
        #pragma unroll
        for (int h = 0; h < 2; h++) { e[h] = v[i][h] == -INFINITY ? 0.0f : __expf(v[i][h] - m); l += e[h]; }
        l = warp_sum(l);
        #pragma unroll
        for (int h = 0; h < 2; h++) ps[r * LP + lane + 32 * h] = __float2half(e[h]);
        if (lane == 0) {
            float* ml = ws_ml + (((size_t)z * chunks + chunk) * tiles * FT_ROWS + r0 + r) * 2;
            ml[0] = m;
            ml[1] = l;
        }
    }
    __syncwarp();
    float* o = ws_o + (((size_t)z * chunks + chunk) * tiles * FT_ROWS + r0 + m0) * D;
    #pragma unroll
    for (int j = 0; j < D / 16; j++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        #pragma unroll
        for (int kk = 0; kk < FT_KEYS / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vb;
            wmma::load_matrix_sync(a, ps + m0 * LP + kk * 16, LP);
            wmma::load_matrix_sync(vb, vs + (kk * 16) * LD + j * 16, LD);
            wmma::mma_sync(acc, a, vb, acc);
        }
        wmma::store_matrix_sync(o + j * 16, acc, D, wmma::mem_row_major);
    }
}
// one warp per (z, row) merges the row's chunks (<= 32: FT_MAX_KEYS / FT_KEYS): lane c holds
// chunk c's weight e^(m_c - M), so the partials' loads are independent of each other; the result
// is written in cache_attention's layouts
__global__ void flash_tree_combine(const float* ws_o, const float* ws_ml, __half* out, int rows, int Hkv, int R, int D,
                                   int Tn, int chunks, int tiles, int tokens_major) {
    const int lane = threadIdx.x % 32, id = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (id >= rows) return;                                    // a whole warp
    const int row = id % R, z = id / R, b = z / Hkv, G = R / Tn;
    const int t = row % Tn, head = (z % Hkv) * G + row / Tn;
    const size_t stride = (size_t)tiles * FT_ROWS;             // rows per chunk in the workspace
    const size_t base = (size_t)z * chunks * stride + row;     // chunk c's entry: base + c * stride
    const float m = lane < chunks ? ws_ml[(base + lane * stride) * 2] : -INFINITY;
    const float l = lane < chunks ? ws_ml[(base + lane * stride) * 2 + 1] : 0.0f;
    const float M = warp_max(m);
    const float w = m == -INFINITY ? 0.0f : __expf(m - M);
    const float inv = 1.0f / warp_sum(w * l);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};                  // d = lane + 32 k, D <= 128
    #pragma unroll 4
    for (int c = 0; c < chunks; c++) {
        const float wc = __shfl_sync(0xffffffffu, w, c);
        const float* o = ws_o + (base + c * stride) * D;
        #pragma unroll
        for (int k = 0; k < 4; k++)
            if (lane + 32 * k < D) acc[k] += wc * o[lane + 32 * k];
    }
    __half* orow = out + (tokens_major ? (((size_t)b * Tn + t) * Hkv * G + head) * D : ((size_t)z * R + row) * D);
    #pragma unroll
    for (int k = 0; k < 4; k++)
        if (lane + 32 * k < D) orow[lane + 32 * k] = __float2half(acc[k] * inv);
}
template <int D>
inline void launch_flash_tree(const __half* q, const __half* keys, const __half* values, const float* mask, __half* out,
                              int Z, int Hkv, int R, int L, int S, int Tn, float scale, int tokens_major, float* ws) {
    const int chunks = (S + FT_KEYS - 1) / FT_KEYS, tiles = (R + FT_ROWS - 1) / FT_ROWS;
    constexpr int shared = 2 * (3 * 64 * (D + 8)) + 4 * 64 * (FT_KEYS + 4) + 2 * 64 * (FT_KEYS + 8);
    // set on every launch: a static "done" flag in an inline function is one flag for every
    // jt.code module of the process (docs/gpu.md), and each module has its own kernel
    cudaFuncSetAttribute(flash_tree<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
    float* ws_o = ws;
    float* ws_ml = ws + (size_t)Z * chunks * tiles * FT_ROWS * D;
    flash_tree<D><<<dim3(chunks, tiles, Z), 128, shared>>>(q, keys, values, mask, ws_o, ws_ml, Hkv, R, L, S, Tn, scale);
    flash_tree_combine<<<(Z * R + 3) / 4, 128>>>(ws_o, ws_ml, out, Z * R, Hkv, R, D, Tn, chunks, tiles, tokens_major);
}
// flash_tree where it applies (fp16: the overload for fp32 never does); true if it ran
inline bool try_flash_tree(const float*, const float*, const float*, const float*, float*, int, int, int, int, int,
                           int, int, float, int, float*) { return false; }
inline bool try_flash_tree(const __half* q, const __half* keys, const __half* values, const float* mask, __half* out,
                           int Z, int Hkv, int R, int L, int D, int S, int Tn, float scale, int tokens_major, float* ws) {
    if (ws == nullptr || Tn < 2 || mask == nullptr || S > FT_MAX_KEYS || (D != 64 && D != 128)) return false;
    if (D == 64) launch_flash_tree<64>(q, keys, values, mask, out, Z, Hkv, R, L, S, Tn, scale, tokens_major, ws);
    else launch_flash_tree<128>(q, keys, values, mask, out, Z, Hkv, R, L, S, Tn, scale, tokens_major, ws);
    return true;
}
// host-side launch, shared by the attention op and the layer ops: several masked fp16 rows
// with D = 64 or 128 and S <= FT_MAX_KEYS go to flash_tree when the op passes its workspace
// (flash_ws; cache_attention's Python side sizes it, flash_tree_ok), the rest to
// cache_attention. blocks: B * Hkv * R, one per query row.
template <class T>
inline void launch_cache_attention(const T* q, const T* keys, const T* values, const float* mask, T* out, int blocks,
                                   int Hkv, int R, int L, int D, int S, int Tn, float scale, int tokens_major,
                                   float* flash_ws) {
    if (try_flash_tree(q, keys, values, mask, out, blocks / R, Hkv, R, L, D, S, Tn, scale, tokens_major, flash_ws))
        return;
    const int threads = 256;
    const int shared = 4 * (D + S + 32 + threads * 8 + (mask ? Tn : 0));
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


FLASH_MAX_KEYS = 2048          # flash_tree's workspace holds a partial result per 64 keys
# flash_tree costs about the same for 1 to 64 query rows of a kv head (one tile), the per-row
# kernel grows with the rows: on a Vicuna-7B step (H200) the per-row kernel took 2.0 ms a step at
# 64 rows and flash_tree 0.76 ms, so the per-row kernel is the faster below ~24 rows (estimated
# from those two; docs/gpu.md)
FLASH_MIN_ROWS = 32


def flash_tree_ok(dtype, head_dim, rows, length, masked) -> bool:
    """cache_attention runs as flash_tree (use_tree_attention, $MEDUSA_TREE_ATTENTION): masked
    fp16 attention with at least FLASH_MIN_ROWS query rows a kv head (rows = G * T), head_dim 64
    or 128, up to FLASH_MAX_KEYS keys."""
    return (use_tree_attention() and masked and rows >= FLASH_MIN_ROWS and str(dtype) == "float16"
            and head_dim in (64, 128) and length <= FLASH_MAX_KEYS)


def cache_attention(q, keys, values, length, mask, scale, tokens_major=False):
    """softmax(q k^T * scale + mask) v over the first `length` positions of the cache.
    q [B, Hkv, G*T, D]; keys, values: the cache's whole buffers [B, Hkv, L, D] (no slice is
    materialised); mask: additive fp32 [B, 1, T, length] or None -> [B, Hkv, G*T, D], or with
    tokens_major [B, T, Hkv*G*D] (heads side by side per token, as o_proj reads them). Where
    flash_tree_ok, the op also returns flash_tree's fp32 workspace (dropped here)."""
    B, H, R, D = q.shape
    T = 1 if mask is None else mask.shape[-2]
    inputs = [q, keys, values] + ([mask.reshape(B, T, length)] if mask is not None else [])
    mask_p = "in3_p" if mask is not None else "(const float*)nullptr"
    shape = (B, T, H * (R // T) * D) if tokens_major else q.shape
    shapes, dtypes, ws = [shape], [q.dtype], "nullptr"
    if T > 1 and flash_tree_ok(q.dtype, D, R, length, mask is not None):
        chunks, rows = -(-length // 64), -(-R // 64) * 64          # FT_KEYS, FT_ROWS
        shapes, dtypes, ws = [shape, (B * H * chunks * rows * (D + 2),)], [q.dtype, "float32"], "out1_p"
    out = jt.code(shapes, dtypes, inputs, cuda_header=_ATTENTION_HEADER,
                  data={"S": length, "T": T, "scale": float(scale)}, cuda_src=f"""
        medusa_k::launch_cache_attention(in0_p, in1_p, in2_p, {mask_p}, out0_p, in0_shape0 * in0_shape1 * in0_shape2,
            in0_shape1, in0_shape2, in1_shape2, in0_shape3, (int)data["S"], (int)data["T"], (float)data["scale"],
            {int(tokens_major)}, {ws});
    """)
    return out[0]
