"""KV-cache compaction: a Medusa step's accepted path moved in every layer's buffers at once."""
from medusa.kernels.cuda.common import _COMMON
from medusa.kernels.cuda.switches import use_kernels
from medusa.runtime.backend import jt

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
// one launch over every buffer [rows, L, D]; the op's one-int output is zeroed as its sync target
template <class T>
inline void launch_compact(const Buffers<T>& bufs, int nbuf, int rows, int L, int D, int start, int n,
                           const Keep& keep, const int* keep_at, int* done) {
    compact<<<grid_of((size_t)nbuf * rows * D), 256>>>(bufs, nbuf, rows, L, D, start, n, keep, keep_at);
    cudaMemsetAsync(done, 0, sizeof(int));
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
        medusa_k::launch_compact(bufs, {len(buffers)}, in0_shape0 * in0_shape1, in0_shape2, in0_shape3,
                                 (int)data["start"], n, keep, nullptr, out0_p);
    """)


def compact_cache_at(buffers, start, keep):
    """compact_cache with the positions in a device var keep (int32 [n], absolute, n <= 32),
    so the host need not know them: the device loop moves a path it has not fetched. Positions
    past the real path may repeat (the cache is truncated after them). Returns a var to sync."""
    fill = "\n".join(f"bufs.p[{i}] = in{i}_p;" for i in range(len(buffers)))
    k = len(buffers)
    return jt.code((1,), "int32", list(buffers) + [keep], cuda_header=_COMPACT_HEADER, data={"start": int(start)},
                   cuda_src=f"""
        medusa_k::Buffers<in0_type> bufs;
        {fill}
        medusa_k::launch_compact(bufs, {k}, in0_shape0 * in0_shape1, in0_shape2, in0_shape3, (int)data["start"],
                                 in{k}_shape0, medusa_k::Keep(), (const int*)in{k}_p, out0_p);
    """)
