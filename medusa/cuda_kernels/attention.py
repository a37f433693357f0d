"""Attention over the KV cache: decode and tree verification, GQA, fp32 softmax."""
from medusa.cuda_kernels.common import _COMMON
from medusa.cuda_kernels.switches import use_tree_attention
from medusa.runtime import jt

MAX_ATTENTION_KEYS = 8192      # the scores of one query row live in shared memory (32 KB of 48)
MAX_HEAD_DIM = 256


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
// Several query rows at once (tree verification, prefill): a block takes TREE_ROWS consecutive
// rows t of one query head and reads each key and value row of the cache once for all of them
// (one block per row read them once per row: a Vicuna-7B 64-node tree step spent 2.0 ms of its
// 10.2 ms of kernel time here). Scores [TREE_ROWS, S] live in shared memory; a warp per row does
// its softmax; the value sum gives each (row, 16-byte chunk of D) to blockDim / (TREE_ROWS * D / N)
// threads over alternating keys. Same layouts and mask as cache_attention.
constexpr int TREE_ROWS = 8;
template <class T>
__global__ void __launch_bounds__(256) tree_attention(const T* q, const T* keys, const T* values, const float* mask,
                                                      T* out, int Hkv, int R, int L, int D, int S, int Tn, float scale,
                                                      int tokens_major) {
    constexpr int N = Vec<T>::N, RT = TREE_ROWS;
    extern __shared__ float smem[];                 // [RT][D] queries | [RT][S] scores | [parts][RT][D] partials
    __shared__ float zinv[RT];
    const int tiles = (Tn + RT - 1) / RT, G = R / Tn;
    const int tile = blockIdx.x % tiles, g = (blockIdx.x / tiles) % G, bh = blockIdx.x / tiles / G;
    const int b = bh / Hkv, t0 = tile * RT, rows = min(RT, Tn - t0);
    float* qs = smem;
    float* sc = qs + RT * D;
    float* part = sc + RT * S;
    const T* kbase = keys + (size_t)bh * L * D;
    const T* vbase = values + (size_t)bh * L * D;
    const size_t qrow0 = (size_t)bh * R + (size_t)g * Tn + t0;     // row index of (this head, t0) in q
    for (int i = threadIdx.x; i < RT * D; i += blockDim.x) {
        const int r = i / D;
        qs[i] = r < rows ? f32(q[(qrow0 + r) * D + i % D]) * scale : 0.0f;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < S; s += blockDim.x) {
        const T* krow = kbase + (size_t)s * D;
        float acc[RT];
        #pragma unroll
        for (int r = 0; r < RT; r++) acc[r] = 0.0f;
        for (int i = 0; i < D; i += N) {
            float k8[N];
            Vec<T>::load(krow + i, k8);
            #pragma unroll
            for (int r = 0; r < RT; r++)
                #pragma unroll
                for (int j = 0; j < N; j++) acc[r] += qs[r * D + i + j] * k8[j];
        }
        #pragma unroll
        for (int r = 0; r < RT; r++)
            sc[r * S + s] = acc[r] + (r < rows ? mask[((size_t)b * Tn + t0 + r) * S + s] : 0.0f);
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int r = warp; r < RT; r += warps) {
        float m = -INFINITY, z = 0.0f;
        for (int s = lane; s < S; s += 32) m = fmaxf(m, sc[r * S + s]);
        m = warp_max(m);
        for (int s = lane; s < S; s += 32) { const float e = __expf(sc[r * S + s] - m); sc[r * S + s] = e; z += e; }
        z = warp_sum(z);
        if (lane == 0) zinv[r] = 1.0f / z;
    }
    __syncthreads();
    const int chunks = D / N, parts = blockDim.x / (chunks * RT);
    const int h = threadIdx.x / (chunks * RT), r = (threadIdx.x / chunks) % RT, c = threadIdx.x % chunks;
    if (h < parts) {
        float acc[N];
        #pragma unroll
        for (int j = 0; j < N; j++) acc[j] = 0.0f;
        for (int s = h; s < S; s += parts) {
            float v8[N];
            Vec<T>::load(vbase + (size_t)s * D + c * N, v8);
            const float p = sc[r * S + s];
            #pragma unroll
            for (int j = 0; j < N; j++) acc[j] += p * v8[j];
        }
        #pragma unroll
        for (int j = 0; j < N; j++) part[(h * RT + r) * D + c * N + j] = acc[j];
    }
    __syncthreads();
    const int head = (bh % Hkv) * G + g;
    for (int i = threadIdx.x; i < RT * D; i += blockDim.x) {
        const int r2 = i / D, d = i % D, t = t0 + r2;
        if (r2 >= rows) continue;
        float acc = 0.0f;
        for (int k = 0; k < parts; k++) acc += part[(k * RT + r2) * D + d];
        T* orow = out + (tokens_major ? (((size_t)b * Tn + t) * Hkv * G + head) * D : (qrow0 + r2) * D);
        orow[d] = from_f32<T>(acc * zinv[r2]);
    }
}
// host-side launch, shared by the attention op and the layer ops: with `tree`, several masked
// rows go to tree_attention where its scores fit in shared memory (and D / N * TREE_ROWS <= 256),
// the rest to cache_attention. blocks: B * Hkv * R, one per query row.
template <class T>
inline void launch_cache_attention(const T* q, const T* keys, const T* values, const float* mask, T* out, int blocks,
                                   int Hkv, int R, int L, int D, int S, int Tn, float scale, int tokens_major,
                                   int tree) {
    const int threads = 256;
    const int chunks = D / Vec<T>::N, parts = chunks * TREE_ROWS <= threads ? threads / (chunks * TREE_ROWS) : 0;
    const int tree_shared = 4 * (TREE_ROWS * D + TREE_ROWS * S + parts * TREE_ROWS * D);
    if (tree && Tn > 1 && mask != nullptr && parts > 0 && tree_shared <= 200 * 1024) {
        if (tree_shared > 48 * 1024)
            cudaFuncSetAttribute(tree_attention<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, tree_shared);
        const int tiles = (Tn + TREE_ROWS - 1) / TREE_ROWS;
        tree_attention<<<blocks / Tn * tiles, threads, tree_shared>>>(q, keys, values, mask, out, Hkv, R, L, D, S, Tn,
                                                                      scale, tokens_major);
        return;
    }
    const int shared = 4 * (D + S + 32 + threads * 8);
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
            {int(tokens_major)}, {int(use_tree_attention())});
    """)
