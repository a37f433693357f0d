"""What every kernel source starts with: fp16/fp32 conversions, 16-byte loads, block reductions."""

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
// (and 16-byte stores of N floats rounded to T, round-to-nearest like from_f32)
template <> struct Vec<__half> {
    static constexpr int N = 8;
    __device__ static __forceinline__ void load(const __half* p, float* o) {
        const uint4 u = *reinterpret_cast<const uint4*>(p);
        const __half2* h = reinterpret_cast<const __half2*>(&u);
        for (int j = 0; j < 4; j++) { const float2 f = __half22float2(h[j]); o[2 * j] = f.x; o[2 * j + 1] = f.y; }
    }
    __device__ static __forceinline__ void store(__half* p, const float* v) {
        uint4 u;
        __half2* h = reinterpret_cast<__half2*>(&u);
        for (int j = 0; j < 4; j++) h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
        *reinterpret_cast<uint4*>(p) = u;
    }
};
template <> struct Vec<float> {
    static constexpr int N = 4;
    __device__ static __forceinline__ void load(const float* p, float* o) {
        const float4 u = *reinterpret_cast<const float4*>(p);
        o[0] = u.x; o[1] = u.y; o[2] = u.z; o[3] = u.w;
    }
    __device__ static __forceinline__ void store(float* p, const float* v) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
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
// blocks of 256 threads for a grid-stride loop over `total` elements (at most 4096 blocks)
inline int grid_of(size_t total) { return (int)(total < 4096 * 256 ? (total + 255) / 256 : 4096); }
}  // namespace medusa_k
"""


def _rows(name, ndim):
    """C++ expression: the product of a jt.code operand's leading ndim - 1 extents (shapes are
    read at run time, so one compiled kernel serves every length)."""
    return " * ".join([f"(size_t){name}_shape{i}" for i in range(ndim - 1)] or ["(size_t)1"])
