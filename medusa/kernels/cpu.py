"""CPU matmul kernels: a BLAS sgemm/sgemv behind a `jt.code` op, beside Jittor's own matmul.

Why: Jittor 1.3.11 without oneDNN has no CPU matmul of its own. `jt.matmul` is a compiled
broadcast-multiply-sum loop on one core, so verifying a tree of n nodes costs about n decode
steps. The BLAS here is OpenBLAS from the `scipy-openblas32` wheel (numpy/scipy's own build,
symbols prefixed `scipy_`), threaded over all cores by default.

    y = blas_matmul(x, w)                   # x [..., K] @ w [K, N] -> [..., N] (Linear layers)
    s = blas_matmul(q, k, trans_b=True)     # q [..., M, D] @ k [..., S, D]^T -> [..., M, S] (batched)
    y = small_rows_matmul(x, w)             # <= 64 rows against a frozen weight, packed once
    y = reference_matmul(x, w)              # the same contracts through Jittor (any dtype, device)
    o = fused_attention(q, k, v, mask, s)   # softmax(q k^T s + mask) v in one op (inference;
                                            # model.attention holds its Jittor reference)

Each function here is one kernel with its plain Jittor reference; `model.matmul` picks one of
the two, in one place. Threads: `set_num_threads(n)`, else $MEDUSA_BLAS_THREADS, else every
core this process may run on. `use_blas(False)` (or $MEDUSA_MATMUL=jittor) switches the model
back to Jittor's loop, e.g. to measure before/after in one process. Both settings live in the
runtime options (medusa/runtime/options.py), so results files record them.
"""
import collections
import ctypes
import functools
import math
import os

import medusa.runtime.options as options
from medusa.runtime.backend import jt


@functools.lru_cache(maxsize=1)
def _openblas():
    """(compile flags for jt.code, the loaded library via ctypes). Imported on first use only,
    so the GPU path never needs the wheel."""
    import scipy_openblas32 as sob
    inc, lib = sob.get_include_dir(), sob.get_lib_dir()
    # rpath: the compiled op finds the library without LD_LIBRARY_PATH
    flags = {f"FLAGS: -I{inc} -L{lib} -lscipy_openblas -Wl,-rpath,{lib} ": 1}
    # the same file the op links against, so both share one OpenBLAS (and one thread setting)
    library = ctypes.CDLL(os.path.join(lib, "libscipy_openblas.so"))
    library.scipy_openblas_set_num_threads(1)      # one thread per call: the kernels thread over calls
    return flags, library


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def set_num_threads(n: int = None) -> int:
    """Threads of these kernels (None: keep the setting, $MEDUSA_BLAS_THREADS unless changed,
    else every available core): the caller and helpers of their own (see _POOL_HEADER).
    Returns the count."""
    if n is not None:
        options.replace(blas_threads=n)            # a ValueError (UsageError) unless n >= 1
    return num_threads()


def num_threads() -> int:
    """Threads these kernels use: the option blas_threads, else every available core."""
    return options.current().blas_threads or _every_core()


@functools.lru_cache(maxsize=1)
def _every_core() -> int:
    return available_cores()


@functools.lru_cache(maxsize=1)
def blas_installed() -> bool:
    """The scipy-openblas32 wheel is there (a pip install of the project brings it; a GPU image
    with only the Jittor wheels may not have it: the CPU then runs Jittor's own loop)."""
    import importlib.util

    return importlib.util.find_spec("scipy_openblas32") is not None


def use_blas(enabled: bool = None) -> bool:
    """Turn the BLAS path on or off for `model.matmul` (None: only ask; the option matmul).
    Returns the setting (False without the library)."""
    if enabled is not None:
        options.replace(matmul="blas" if enabled else "jittor")
    return options.current().matmul == "blas" and blas_installed()


# Threads for the kernels below. Each job is split into chunks; the calling thread and helper
# threads claim chunks with one compare-and-swap of (job, next chunk), so the caller runs every
# chunk no helper has claimed and waits only for chunks a helper is running. A helper the OS has
# not scheduled costs nothing: an OpenMP team (or OpenBLAS's own threads) waits for every thread
# at its barrier, which cost milliseconds per call on a loaded 2-core machine. Helpers spin for
# ~0.5 ms after a job, then sleep. Every compiled kernel has its own helpers (a static per .so).
_POOL_HEADER = r"""
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
namespace {
inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}
struct Pool {
    std::atomic<unsigned long long> state{0};     // job << 32 | next unclaimed chunk
    std::atomic<int> chunks{0}, done{0};
    std::atomic<void (*)(void*, int)> call{nullptr};
    std::atomic<void*> ctx{nullptr};
    std::mutex mu;
    std::condition_variable cv;
    int helpers = 0;

    unsigned job_of(unsigned long long s) const { return (unsigned)(s >> 32); }
    bool run_one(unsigned job) {                   // claim and run one chunk of `job`
        unsigned long long s = state.load(std::memory_order_acquire);
        while (job_of(s) == job && (int)(s & 0xffffffffu) < chunks.load(std::memory_order_relaxed))
            if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
                call.load(std::memory_order_relaxed)(ctx.load(std::memory_order_relaxed), (int)(s & 0xffffffffu));
                done.fetch_add(1, std::memory_order_release);
                return true;
            }
        return false;
    }
    void helper() {
        unsigned seen = 0;
        for (;;) {
            for (int spin = 0; spin < 20000 && job_of(state.load(std::memory_order_acquire)) == seen; spin++) relax();
            {
                std::unique_lock<std::mutex> lock(mu);
                cv.wait(lock, [&] { return job_of(state.load(std::memory_order_acquire)) != seen; });
            }
            seen = job_of(state.load(std::memory_order_acquire));
            while (run_one(seen)) {}
        }
    }
    template <class F> void run(int threads, int n, F& f) {   // f(0) .. f(n - 1), then return
        if (threads <= 1 || n <= 1) { for (int i = 0; i < n; i++) f(i); return; }
        for (; helpers < threads - 1; helpers++) std::thread([this] { helper(); }).detach();
        done.store(0, std::memory_order_relaxed);
        chunks.store(n, std::memory_order_relaxed);
        call.store([](void* c, int i) { (*(F*)c)(i); }, std::memory_order_relaxed);
        ctx.store(&f, std::memory_order_relaxed);
        unsigned job = job_of(state.load(std::memory_order_relaxed)) + 1;
        state.store((unsigned long long)job << 32, std::memory_order_release);
        { std::lock_guard<std::mutex> lock(mu); }        // a helper between its check and its wait
        cv.notify_all();
        while (run_one(job)) {}
        for (int spin = 0; done.load(std::memory_order_acquire) < n; spin++)
            if (spin > 1000) std::this_thread::yield(); else relax();
    }
};
Pool& pool() { static Pool* p = new Pool; return *p; }   // never destroyed: helpers are detached
}  // namespace
"""


# C[i] = op(A[i]) op(B[i]) for i < batch, row-major; in0 = A [batch, ., .], in1 = B [batch, ., .].
# Threads: the pool above over (batch, column block) chunks, each a single-threaded OpenBLAS call
# (OpenBLAS's own threads are never used). The trans flags are baked into the source, so each
# (trans_a, trans_b) is its own compiled kernel.
# M == 1 without transposes is a matrix-vector product: sgemv streams B once (3.1 ms vs sgemm's
# 11.6 ms for [1,576]x[576,49152], this CPU).
_GEMM_SRC = """
const int M = out0_shape1, N = out0_shape2, K = {ta} ? in0_shape1 : in0_shape2;
const int lda = in0_shape2, ldb = in1_shape2, threads = (int)data["threads"];
const int parts = N >= 128 * threads ? 2 * threads : 1, block = (N + parts - 1) / parts;
auto chunk = [&](int c) {{                     // one (batch index, column block) of C
    const int i = c / parts, n0 = (c % parts) * block, n = std::min(N, n0 + block) - n0;
    if (n <= 0) return;
    const float *A = in0_p + (size_t)i * in0_shape1 * lda;
    const float *B = in1_p + (size_t)i * in1_shape1 * ldb + ({tb} ? (size_t)n0 * ldb : n0);
    float *C = out0_p + (size_t)i * M * N + n0;
    if (M == 1 && !{ta} && !{tb})
        scipy_cblas_sgemv(CblasRowMajor, CblasTrans, K, n, 1.0f, B, ldb, A, 1, 0.0f, C, 1);
    else
        scipy_cblas_sgemm(CblasRowMajor, {ta} ? CblasTrans : CblasNoTrans, {tb} ? CblasTrans : CblasNoTrans,
                          M, n, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
}};
pool().run(threads, out0_shape0 * parts, chunk);
"""


def blas_gemm(a, b, trans_a=False, trans_b=False):
    """Batched op(a) @ op(b) for 3-D fp32 Vars, OpenBLAS calls in one op (no gradient of its own).

    a: [Bt, M, K] ([Bt, K, M] with trans_a); b: [Bt, K, N] ([Bt, N, K] with trans_b)
    -> [Bt, M, N] fp32."""
    Bt, M, K = a.shape[0], *(a.shape[:0:-1] if trans_a else a.shape[1:])
    bK, N = b.shape[:0:-1] if trans_b else b.shape[1:]
    if bK != K or b.shape[0] != Bt:
        raise ValueError(f"gemm shapes do not match: a {list(a.shape)} (trans {trans_a}), "
                         f"b {list(b.shape)} (trans {trans_b})")
    flags, _ = _openblas()
    out = jt.code((Bt, M, N), "float32", [a, b], cpu_header=_POOL_HEADER + "#include <cblas.h>\n#include <algorithm>\n",
                  cpu_src=_GEMM_SRC.format(ta=int(trans_a), tb=int(trans_b)), data={"threads": num_threads()})
    out.compile_options = flags
    return out


class _BlasMatmul(jt.Function):
    """a [Bt, M, K] @ b [Bt, K, N] (b^T of [Bt, N, K] with trans_b), with its gradient through
    the same BLAS (training the heads)."""

    def __init__(self, trans_b=False):
        self.trans_b = trans_b

    def execute(self, a, b):
        self.saved = a, b
        return blas_gemm(a, b, trans_b=self.trans_b)

    def grad(self, g):                                  # g [Bt, M, N]
        a, b = self.saved
        da = blas_gemm(g, b, trans_b=not self.trans_b)  # [Bt, M, K]
        db = blas_gemm(g, a, trans_a=True) if self.trans_b else blas_gemm(a, g, trans_a=True)
        return da, db                                   # db [Bt, N, K] with trans_b, else [Bt, K, N]


def blas_matmul(a, b, trans_b=False):
    """a [..., M, K] fp32 @ b fp32 -> [..., M, N] fp32 on the CPU through OpenBLAS, differentiable.

    b [K, N] (a weight; [N, K] with trans_b): a's leading axes are folded into the rows, so a
    batched [B, T, K] input is one gemm. b [..., K, N] with a's leading axes ([..., N, K] with
    trans_b): one gemm per leading index (attention)."""
    K = a.shape[-1]
    if b.ndim == 2:
        rows = a.reshape(1, -1, K)                                  # [1, R, K]
        out = _BlasMatmul(trans_b)(rows, b.reshape(1, *b.shape))    # [1, R, N]
        return out.reshape(*a.shape[:-1], out.shape[-1])
    if tuple(a.shape[:-2]) != tuple(b.shape[:-2]):
        raise ValueError(f"blas_matmul: leading axes differ: a {list(a.shape)}, b {list(b.shape)}")
    lead = tuple(a.shape[:-2])
    out = _BlasMatmul(trans_b)(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.reshape(*lead, *out.shape[-2:])


# ---------------------------------------------------------------- few rows, packed weight
# A few rows (a tree's nodes, the heads) against a large weight is bound by streaming the weight,
# and OpenBLAS's sgemm there reads it slowly: [9,576]x[576,1536] with the weights out of cache,
# two threads, this CPU: OpenBLAS 0.35 ms, this kernel on the weight stored as contiguous
# 32-column strips 0.16 ms (each strip read once for all rows). It matches OpenBLAS up to 64 rows
# (0.77 vs 0.77 ms) and is not meant for more.
PACK_WIDTH = 32                         # columns per strip: four 8-float vectors
SMALL_ROWS = 64                         # the most rows this kernel is used for
_PACK_CACHE_BYTES = 4 << 30             # packed copies kept (least recently used dropped first)
_packed = collections.OrderedDict()     # weight Var id -> packed Var (ids are never reused)

_SMALL_HEADER = _POOL_HEADER + """
#include <algorithm>
#include <cstring>
typedef float v8 __attribute__((vector_size(32)));
// C[0:MR, n0:n0+32] = A[0:MR, :] Bs, Bs one packed strip [K, 32]; 4 * MR sums kept in registers
template <int MR>
static inline void small_tile(const float* A, const float* Bs, float* C, int K, int N, int n0) {
    v8 c[MR][4] = {};
    for (int k = 0; k < K; k++, Bs += 32) {
        v8 a[MR];                                  // MR broadcasts + one B vector + 4 MR sums: 16 registers
        for (int r = 0; r < MR; r++) a[r] = A[r * K + k] - (v8){};
        for (int v = 0; v < 4; v++) {
            v8 b;
            std::memcpy(&b, Bs + 8 * v, sizeof b);
            for (int r = 0; r < MR; r++) c[r][v] += a[r] * b;
        }
    }
    for (int r = 0; r < MR; r++) std::memcpy(C + r * N + n0, c[r], sizeof c[r]);
}
static void small_strip(const float* A, const float* Bs, float* C, int M, int K, int N, int n0) {
    int m = 0;
    for (; m + 3 <= M; m += 3) small_tile<3>(A + m * K, Bs, C + m * N, K, N, n0);
    if (M - m == 2) small_tile<2>(A + m * K, Bs, C + m * N, K, N, n0);
    if (M - m == 1) small_tile<1>(A + m * K, Bs, C + m * N, K, N, n0);
}
"""
_SMALL_SRC = """
const int M = in0_shape0, K = in0_shape1, strips = in1_shape0, N = strips * 32;
const int threads = (int)data["threads"], chunks = std::min(strips, 8 * threads);
auto chunk = [&](int c) {                       // strips [s0, s1) of the weight
    for (int s = strips * c / chunks, s1 = strips * (c + 1) / chunks; s < s1; s++)
        small_strip(in0_p, in1_p + (size_t)s * K * 32, out0_p, M, K, N, s * 32);
};
pool().run(threads, chunks, chunk);
"""


def pack_weight(w):
    """w [K, N] (N a multiple of PACK_WIDTH) -> [N / PACK_WIDTH, K, PACK_WIDTH] fp32, strip s holding
    columns s*W .. s*W+W-1 row after row."""
    K, N = w.shape
    return w.float32().reshape(K, N // PACK_WIDTH, PACK_WIDTH).transpose(1, 0, 2).clone().stop_grad()


def packed(w):
    """pack_weight(w), made once per weight Var and kept (an assigned or updated weight is a new
    Var, so a stale copy is never used)."""
    key = w.id
    if key not in _packed:
        _packed[key] = pack_weight(w).sync()
        while len(_packed) > 1 and sum(math.prod(v.shape) * 4 for v in _packed.values()) > _PACK_CACHE_BYTES:
            _packed.popitem(last=False)
    _packed.move_to_end(key)
    return _packed[key]


class _SmallRows(jt.Function):
    """x [R, K] @ a frozen w [K, N] through its packed copy; the gradient goes to x only."""

    def execute(self, x, w):
        self.w = w
        return jt.code((x.shape[0], w.shape[1]), "float32", [x, packed(w)], cpu_header=_SMALL_HEADER,
                       cpu_src=_SMALL_SRC, data={"threads": num_threads()})

    def grad(self, g):                                                    # g [R, N]
        dx = blas_gemm(g.reshape(1, *g.shape), self.w.reshape(1, *self.w.shape), trans_b=True)
        return dx.reshape(dx.shape[1:]), None                             # [R, K]; w is frozen


def small_rows_matmul(x, w, trans_b=False):
    """x [..., K] fp32 with few rows (up to SMALL_ROWS) @ w [K, N] -> [..., N] fp32, through a
    packed copy of w (N a multiple of PACK_WIDTH), threads over column strips. w is frozen: its
    packed copy is cached, and only x gets a gradient. (trans_b is not supported: the argument
    keeps one signature for every kernel.)"""
    if trans_b or w.ndim != 2 or w.shape[1] % PACK_WIDTH:
        raise ValueError(f"small_rows_matmul takes w [K, N] with N % {PACK_WIDTH} == 0, got {list(w.shape)}"
                         f"{' (trans_b)' if trans_b else ''}")
    K, N = w.shape
    out = _SmallRows()(x.reshape(-1, K), w)                              # [R, N]
    return out.reshape(*x.shape[:-1], N)


def reference_matmul(a, b, trans_b=False):
    """The same contract as blas_matmul through Jittor's own ops (any dtype, any device)."""
    if trans_b:
        return jt.nn.bmm_transpose(a, b) if b.ndim > 2 else jt.matmul(a, b.transpose(1, 0))
    return jt.matmul(a, b)


# ---------------------------------------------------------------- attention (inference, CPU)
# One pass per query row: scores against every cached key, the additive mask, softmax, and the
# weighted sum of values, threaded over (batch, kv head, row block). Jittor's own ops make each
# of those a separate loop over [B, Hkv, G*T, S] (about a third of an mc_sim_7b_63 tree step on
# this CPU); here the row's scores stay in a small buffer. Dot products over head_dim use 8-float
# vectors when head_dim % 8 == 0.
_ATTN_HEADER = _POOL_HEADER + """
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
typedef float v8 __attribute__((vector_size(32)));
static inline float attn_dot(const float* a, const float* b, int D) {
    if (D % 8 == 0) {
        v8 acc = {};
        for (int d = 0; d < D; d += 8) {
            v8 x, y;
            std::memcpy(&x, a + d, sizeof x);
            std::memcpy(&y, b + d, sizeof y);
            acc += x * y;
        }
        float s = 0;
        for (int i = 0; i < 8; i++) s += acc[i];
        return s;
    }
    float s = 0;
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}
"""
_ATTN_SRC = """
// in0 q [B, H, R, D] (R = G * T rows: query head g of this kv head at position t is row g * T + t),
// in1 k, in2 v [B, H, S, D], in3 mask [B, T, S] additive; out0 [B, H, R, D]
const int B = in0_shape0, H = in0_shape1, R = in0_shape2, D = in0_shape3, S = in1_shape2, T = in3_shape1;
const float scale = (float)data["scale"];
const int threads = (int)data["threads"], block = 8, per_bh = (R + block - 1) / block;
auto chunk = [&](int c) {
    const int bh = c / per_bh, r0 = (c % per_bh) * block, r1 = std::min(R, r0 + block), b = bh / H;
    const float *K = in1_p + (size_t)bh * S * D, *V = in2_p + (size_t)bh * S * D;
    std::vector<float> p(S);
    for (int r = r0; r < r1; r++) {
        const float *q = in0_p + ((size_t)bh * R + r) * D, *m = in3_p + ((size_t)b * T + r % T) * S;
        float top = -INFINITY;
        for (int s = 0; s < S; s++) {
            p[s] = attn_dot(q, K + (size_t)s * D, D) * scale + m[s];
            top = std::max(top, p[s]);
        }
        float sum = 0;
        for (int s = 0; s < S; s++) sum += (p[s] = std::exp(p[s] - top));
        float *o = out0_p + ((size_t)bh * R + r) * D;
        std::fill(o, o + D, 0.0f);
        for (int s = 0; s < S; s++) {
            const float w = p[s] / sum, *vs = V + (size_t)s * D;
            for (int d = 0; d < D; d++) o[d] += w * vs[d];
        }
    }
};
pool().run(threads, B * H * per_bh, chunk);
"""


def fused_attention(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v in one op, fp32, no gradient (inference on the CPU).

    q [B, Hkv, G*T, D] (the G query heads of each kv head folded into rows, head-major), k, v
    [B, Hkv, S, D], mask [B, T, S] additive fp32 -> [B, Hkv, G*T, D]."""
    B, H, R, D = q.shape
    if k.shape != v.shape or tuple(k.shape[:2]) != (B, H) or k.shape[3] != D or mask.shape[0] != B \
            or R % mask.shape[1] or mask.shape[2] != k.shape[2]:
        raise ValueError(f"fused_attention shapes do not match: q {list(q.shape)}, k {list(k.shape)}, "
                         f"v {list(v.shape)}, mask {list(mask.shape)}")
    return jt.code(q.shape, "float32", [q.float32(), k.float32(), v.float32(), mask.float32()],
                   cpu_header=_ATTN_HEADER, cpu_src=_ATTN_SRC,
                   data={"threads": num_threads(), "scale": float(scale)}).stop_grad()

