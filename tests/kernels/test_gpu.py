"""GPU-only paths: the model, Medusa decoding, the heads' projection and the fused kernels on CUDA.

Run on a CUDA machine by scripts/gpu_run.sh (`pytest -m gpu`); skipped where Jittor has no CUDA.
The reference is the same random model run by Jittor on the CPU in fp32, which the CPU tests hold
to transformers. No torch here: on the GPU image transformers needs numpy 2, Jittor numpy < 2.
"""
import numpy as np
import pytest
from support import OracleHeads, random_heads

import medusa.runtime.options as options
from medusa.decoding.core import forced_logits, generate
from medusa.decoding.loop import medusa_generate
from medusa.decoding.steps import topk_indices
from medusa.heads.families import HeadConfig, build_heads
from medusa.kernels import cuda as ck
from medusa.model.config import ModelConfig
from medusa.model.transformer import Transformer
from medusa.runtime.backend import gpu_available, jt, use_device

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (gpu_available() and jt.has_cuda), reason="needs Jittor with CUDA")]

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=320, rms_norm_eps=1e-6, rope_theta=10000.0,
              max_position_embeddings=512)
CONFIGS = {"llama": dict(COMMON, model_type="llama", tie_word_embeddings=False),
           "qwen3": dict(COMMON, model_type="qwen3", head_dim=32, tie_word_embeddings=True)}
PROMPT = [int(t) for t in np.random.default_rng(0).integers(6, 320, 16)]
STEPS = 24


def random_state(family, seed=0) -> dict:
    """Seeded numpy weights for every parameter (std 0.15: peaked logits, few near-ties)."""
    rng, model = np.random.default_rng(seed), Transformer(ModelConfig.from_dict(CONFIGS[family]))
    return {name: (1 + 0.1 * rng.standard_normal(p.shape) if p.ndim == 1 else 0.15 * rng.standard_normal(p.shape))
            .astype(np.float32) for name, p in model.named_parameters()}


def build(family, state, dtype, fused=False):
    model = Transformer(ModelConfig.from_dict(CONFIGS[family]), dtype, 512)
    for name, p in model.named_parameters():
        p.assign(jt.array(state[name]).cast(dtype))
    return model.eval().fuse_projections() if fused else model.eval()


def margins(logits):
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@pytest.fixture(scope="module")
def cpu_reference():
    """family -> (state, greedy tokens after PROMPT, fp32 logits along them), computed on the CPU."""
    use_device("cpu")
    out = {}
    with jt.no_grad():
        for family in CONFIGS:
            state = random_state(family)
            model = build(family, state, "float32")
            tokens = generate(model, PROMPT, STEPS).output_ids
            out[family] = state, tokens, forced_logits(model, PROMPT, tokens[:-1])
    return out


@pytest.fixture
def cuda():
    use_device("cuda")
    with jt.no_grad():
        yield
    use_device("cpu")


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("family", CONFIGS)
def test_cuda_fp32_matches_cpu(cpu_reference, cuda, family, fused):
    state, tokens, want = cpu_reference[family]
    model = build(family, state, "float32", fused)
    got = forced_logits(model, PROMPT, tokens[:-1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert generate(model, PROMPT, STEPS).output_ids == tokens


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("family", CONFIGS)
def test_cuda_fp16_close_to_cpu_fp32(cpu_reference, cuda, family, fused):
    state, tokens, want = cpu_reference[family]
    got = forced_logits(build(family, state, "float16", fused), PROMPT, tokens[:-1])
    rel = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    assert rel.max() < 2e-2, rel
    clear = margins(want) > 0.1       # fp16 may flip only near-ties
    assert clear.sum() >= len(clear) // 2
    assert (got.argmax(-1) == want.argmax(-1))[clear].all()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("tree", ["8_node", "mc_sim_7b_63"])
@pytest.mark.parametrize("head_family", ["medusa", "rnn"])
def test_medusa_greedy_is_lossless_on_cuda_fp32(cpu_reference, cuda, head_family, tree, fused):
    state, tokens, _ = cpu_reference["llama"]
    model = build("llama", state, "float32", fused)
    out = medusa_generate(model, random_heads(model, head_family, share=False), PROMPT, STEPS, tree)
    assert out.output_ids == tokens


@pytest.mark.parametrize("sequential", [False, True])
def test_oracle_heads_accept_full_depth_on_cuda(cpu_reference, cuda, sequential):
    """Every step accepts depth + 1 tokens: the KV-cache compaction of long paths on the GPU."""
    state, tokens, _ = cpu_reference["qwen3"]
    model = build("qwen3", state, "float32")
    heads = OracleHeads(model, PROMPT + tokens, sequential=sequential)
    out = medusa_generate(model, heads, PROMPT, 21, "8_node")
    assert out.output_ids == tokens[:21]
    assert out.accept_lengths == [5] * 4


def assert_same_up_to_near_ties(got, want, want_margins, tie=1e-2):
    """got == want, or they part where plain fp16 decoding itself had a near-tie."""
    if got == want:
        return
    i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    assert want_margins[i] < tie, f"diverged at {i} with a margin of {want_margins[i]:.4f}: {got} vs {want}"


@pytest.mark.parametrize("tree", ["8_node", "mc_sim_7b_63"])
def test_medusa_greedy_on_cuda_fp16_with_shared_lm_head(cpu_reference, cuda, tree):
    """fp16: the tree and the single-token steps round differently, so an exact tie may break
    either way; anywhere else Medusa must give plain greedy's tokens. The shared-lm_head heads
    project in fp16 here (heads._shared_projection)."""
    state, _, _ = cpu_reference["qwen3"]
    model = build("qwen3", state, "float16")
    plain = generate(model, PROMPT, STEPS).output_ids
    plain_margins = margins(forced_logits(model, PROMPT, plain[:-1]))
    out = medusa_generate(model, random_heads(model, "medusa", share=True), PROMPT, STEPS, tree)
    assert_same_up_to_near_ties(out.output_ids, plain, plain_margins)


def test_shared_projection_in_fp16_without_gradients(cuda):
    rng = np.random.default_rng(1)
    lm_head = jt.array(rng.standard_normal((64, 320)).astype(np.float32) * 0.1).float16()
    hidden = jt.array(rng.standard_normal((1, 3, 64)).astype(np.float32))
    heads = build_heads(HeadConfig(num_heads=2, hidden_size=64, vocab_size=320, share_lm_head=True))
    fast, _ = heads(hidden, None, lm_head)
    with jt.enable_grad():
        exact, _ = heads(hidden, None, lm_head)
    fast, exact = fast.numpy(), exact.numpy()
    assert fast.dtype == np.float32 and fast.shape == exact.shape == (2, 1, 3, 320)
    np.testing.assert_allclose(fast, exact, atol=2e-2)
    assert (fast.argmax(-1) == exact.argmax(-1)).mean() >= 0.8


def test_topk_indices_on_cuda(cuda):
    x = np.random.default_rng(2).permutation(4 * 1000).reshape(4, 1000).astype(np.float32)
    for k in (1, 3, 10):
        got = topk_indices(jt.array(x), k).numpy()
        np.testing.assert_array_equal(got, np.argsort(-x, axis=-1)[:, :k])


# ---------------------------------------------------------------- fused kernels vs their references
def rand(shape, dtype, seed, scale=1.0):
    return jt.array((scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)).cast(dtype)


def close(got, want, dtype):
    tol = 2e-3 if dtype == "float16" else 2e-5
    np.testing.assert_allclose(got.float32().numpy(), want.float32().numpy(), rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 7, 576), (3, 4096), (1, 9, 2, 32), (2, 40000), (3, 22)])
def test_rms_norm_kernel(cuda, dtype, shape):
    x, w = rand(shape, dtype, 0), rand(shape[-1:], dtype, 1, 0.1) + 1
    close(ck.rms_norm(x, w, 1e-6), ck.reference_rms_norm(x, w, 1e-6), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 7, 576), (1, 3, 4096), (2, 40000), (3, 22)])
def test_add_rms_norm_kernel(cuda, dtype, shape):
    x, d, w = rand(shape, dtype, 0), rand(shape, dtype, 9), rand(shape[-1:], dtype, 1, 0.1) + 1
    for got, want in zip(ck.add_rms_norm(x, d, w, 1e-6), ck.reference_add_rms_norm(x, d, w, 1e-6)):
        close(got, want, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("B,T,nq,nkv,d", [(1, 1, 4, 2, 32), (2, 9, 4, 2, 32), (1, 64, 32, 32, 128), (1, 3, 9, 3, 64)])
def test_qkv_rope_kernel(cuda, dtype, B, T, nq, nkv, d):
    model = Transformer(ModelConfig.from_dict(dict(COMMON, model_type="llama", head_dim=d)), dtype, 512)
    qkv = rand((B, T, (nq + 2 * nkv) * d), dtype, 2)
    positions = jt.array(np.random.default_rng(3).integers(0, 500, (B, T)).astype(np.int32))
    got = ck.qkv_rope(qkv, model._cos32, model._sin32, positions, nq, nkv, d)
    want = ck.reference_qkv_rope(qkv, model._cos32, model._sin32, positions, nq, nkv, d)
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape)
        close(g, w, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 1, 256), (2, 9, 3072), (5, 22)])
def test_silu_mul_kernel(cuda, dtype, shape):
    x = rand(shape, dtype, 4)
    close(ck.silu_mul(x), ck.reference_silu_mul(x), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("H,G,T,S,D", [(2, 2, 1, 1, 32), (2, 2, 1, 37, 32), (32, 1, 1, 300, 128), (2, 2, 9, 50, 64),
                                       (4, 3, 64, 700, 128), (1, 1, 1, 5000, 64), (2, 2, 13, 40, 128),
                                       (2, 1, 9, 2100, 64)])
@pytest.mark.parametrize("tree", [False, True])
def test_cache_attention_kernel(cuda, monkeypatch, dtype, H, G, T, S, D, tree):
    """Against model.attention on the sliced cache: decode (no mask) and tree steps (a random
    mask block over the newest T positions), GQA, both output layouts, a cache longer than S;
    with `tree`, several masked fp16 rows go to flash_tree: 192 rows = 3 tiles of 64 over 11
    chunks of 64 keys (the last partial), 26 rows (a partial tile) over 40 keys, D = 64 and 128;
    2100 keys are over FLASH_MAX_KEYS (the per-row kernel)."""
    from medusa.kernels.cuda import attention as attention_kernels
    from medusa.model.transformer import attention

    monkeypatch.setattr(attention_kernels, "FLASH_MIN_ROWS", 2)    # every tree case, not only >= 32 rows
    L = S + 11
    q, keys, values = rand((1, H, G * T, D), dtype, 5), rand((1, H, L, D), dtype, 6), rand((1, H, L, D), dtype, 7)
    mask = None
    if T > 1:
        block = np.random.default_rng(8).random((T, T)) < 0.5
        np.fill_diagonal(block, True)
        m = np.zeros((1, 1, T, S), np.float32)
        m[0, 0, :, S - T:] = np.where(block, 0.0, -1e9)
        mask = jt.array(m)
    want = attention(q, keys[:, :, :S], values[:, :, :S], mask, D ** -0.5)
    with options.override(tree_attention=tree):
        close(ck.cache_attention(q, keys, values, S, mask, D ** -0.5), want, dtype)
        tokens_major = ck.cache_attention(q, keys, values, S, mask, D ** -0.5, tokens_major=True)
    close(tokens_major, want.reshape(1, H * G, T, D).transpose(0, 2, 1, 3).reshape(1, T, H * G * D), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("K,N", [(64, 320), (576, 200), (576, 1536), (4096, 12288), (11008, 4096)])
def test_gemv_kernel(cuda, dtype, K, N):
    x, w = rand((1, 1, K), dtype, 10), rand((K, N), dtype, 11, 0.05)
    assert ck.gemv_ok(x, w)
    close(ck.gemv(x, w), jt.matmul(x.float32(), w.float32()).cast(dtype), dtype)


@pytest.mark.parametrize("M,K,N", [(2, 64, 320), (9, 576, 960), (16, 576, 3072), (33, 1536, 576), (64, 4096, 12288),
                                   (64, 11008, 4096), (64, 576, 49152)])
@pytest.mark.parametrize("bias", [False, True])
def test_mma_rows_kernel(cuda, M, K, N, bias):
    """The tensor-core product of a tree's rows vs cuBLAS (both accumulate in fp32)."""
    x, w = rand((1, M, K), "float16", 23), rand((K, N), "float16", 24, 0.05)
    b = rand((N,), "float16", 25) if bias else None
    assert ck.mma_rows_ok(x, w) == (K * N <= ck.MMA_MAX_WEIGHT)   # larger weights: cuBLAS is faster
    want = jt.matmul(x, w)
    close(ck.mma_rows(x, w, bias=b), want if b is None else want + b, "float16")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("K,N,delta,bias", [(64, 320, False, False), (576, 1728, True, False), (576, 1536, True, True),
                                            (4096, 12288, True, False), (8192, 64, False, True)])
def test_norm_gemv_kernel(cuda, dtype, K, N, delta, bias):
    """The residual add, RMSNorm and the projection in one kernel vs add + norm + matmul."""
    x, w, nw = rand((1, 1, K), dtype, 12), rand((K, N), dtype, 13, 0.05), rand((K,), dtype, 14, 0.1) + 1
    d = rand((1, 1, K), dtype, 15) if delta else None
    b = rand((N,), dtype, 16) if bias else None
    assert ck.norm_gemv_ok(x, w)
    h, y = ck.norm_gemv(x, d, nw, 1e-6, w, b)
    want_h, want_y = ck.reference_norm_gemv(x, d, nw, 1e-6, w, b)
    close(h, want_h, dtype)
    close(y, want_y, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("I,N", [(128, 64), (1536, 576), (11008, 4096)])
def test_silu_gemv_kernel(cuda, dtype, I, N):
    gate_up, w = rand((1, 1, 2 * I), dtype, 17), rand((I, N), dtype, 18, 0.05)
    assert ck.silu_gemv_ok(gate_up, w)
    close(ck.silu_gemv(gate_up, w), ck.reference_silu_gemv(gate_up, w), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("B,T,nq,nkv,d,start", [(1, 1, 4, 2, 32, 0), (1, 1, 32, 32, 128, 130), (2, 9, 4, 2, 32, 17),
                                                (1, 64, 9, 3, 64, 200)])
def test_qkv_rope_into_cache_kernel(cuda, dtype, B, T, nq, nkv, d, start):
    """q in the folded layout, k and v written at [start, start + T) of the cache's buffers, the
    positions around them untouched."""
    model = Transformer(ModelConfig.from_dict(dict(COMMON, model_type="llama", head_dim=d)), dtype, 512)
    qkv = rand((B, T, (nq + 2 * nkv) * d), dtype, 19)
    positions = jt.array(np.random.default_rng(20).integers(0, 500, (B, T)).astype(np.int32))
    L = start + T + 5
    keys, values = rand((B, nkv, L, d), dtype, 21), rand((B, nkv, L, d), dtype, 22)
    before = keys.numpy().copy(), values.numpy().copy()
    q = ck.qkv_rope_into_cache(qkv, model._cos32, model._sin32, positions, keys, values, start, nq, nkv, d)
    want_q, want_k, want_v = ck.reference_qkv_rope(qkv, model._cos32, model._sin32, positions, nq, nkv, d)
    close(q, want_q.reshape(B, nkv, (nq // nkv) * T, d), dtype)
    for buffer, old, want in zip((keys, values), before, (want_k, want_v)):
        got = buffer.numpy()
        close(jt.array(got[:, :, start:start + T]), want, dtype)
        np.testing.assert_array_equal(got[:, :, :start], old[:, :, :start])
        np.testing.assert_array_equal(got[:, :, start + T:], old[:, :, start + T:])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("keep", [[1, 2], [3, 4, 7, 8], [2, 5, 6, 9, 10, 11]])
def test_compact_cache_kernel(cuda, dtype, keep):
    """One kernel moves the kept positions of every buffer; sources that are also destinations
    (keep[j] == start + i) are read before they are overwritten."""
    from medusa.model.kvcache import KVCache

    cfg = ModelConfig.from_dict(CONFIGS["llama"])
    cache = KVCache(cfg, 1, 16, dtype)
    for layer in range(cfg.num_hidden_layers):
        cache.keys[layer] = rand((1, 2, 16, 16), dtype, 30 + layer)
        cache.values[layer] = rand((1, 2, 16, 16), dtype, 40 + layer)
    before = [b.numpy().copy() for b in cache.keys + cache.values]
    start = 1
    cache.length = 16
    cache.compact(start, [start + k for k in keep])
    assert cache.length == start + len(keep)
    for got, old in zip(cache.keys + cache.values, before):
        want = old.copy()
        want[:, :, start:start + len(keep)] = old[:, :, [start + k for k in keep]]
        np.testing.assert_array_equal(got.numpy()[:, :, :cache.length], want[:, :, :cache.length])


@pytest.mark.parametrize("layer_op", [True, False])
def test_fused_model_runs_the_kernels(cpu_reference, cuda, monkeypatch, layer_op):
    """On CUDA the fused model calls each kernel in every layer: a decode step's layer is six
    kernels (norm_gemv twice, qkv_rope_into_cache, cache_attention, gemv, silu_gemv), launched
    from one op (decode_layer), and the prompt's layers are one op each (rows_layer), unless the
    layer op is switched off."""
    state, tokens, _ = cpu_reference["llama"]
    calls = {}
    names = ("rms_norm", "add_rms_norm", "qkv_rope", "qkv_rope_into_cache", "silu_mul", "cache_attention", "gemv",
             "norm_gemv", "silu_gemv", "decode_layer", "rows_layer")
    for name in names:
        real = getattr(ck, name)
        monkeypatch.setattr(ck, name, lambda *a, _r=real, _n=name, **k: calls.update({_n: calls.get(_n, 0) + 1}) or _r(*a, **k))
    with options.override(layer_op=layer_op, rows_layer=layer_op, exact="off"):   # (exact: the prompt on decode_layer)
        forced_logits(build("llama", state, "float16", fused=True), PROMPT, tokens[:3])
    calls = {name: calls.get(name, 0) for name in names}
    L = CONFIGS["llama"]["num_hidden_layers"]
    steps = 3                                 # one-token steps after the 16-token prompt
    assert calls["qkv_rope"] == 0 and calls["gemv"] == steps * (0 if layer_op else L) + steps + 1   # (o_proj,)
    if layer_op:                              # lm_head per step and the prompt's last logits
        assert calls["rows_layer"] == L and calls["decode_layer"] == steps * L       # the prompt, the steps
        assert calls["add_rms_norm"] == steps + 1                                   # the final norms
        assert calls["rms_norm"] == calls["silu_mul"] == calls["norm_gemv"] == calls["silu_gemv"] == 0
        assert calls["qkv_rope_into_cache"] == calls["cache_attention"] == 0
    else:
        assert calls["rows_layer"] == calls["decode_layer"] == 0
        assert calls["rms_norm"] == 1 and calls["silu_mul"] == L and calls["add_rms_norm"] == 2 * L + steps
        assert calls["qkv_rope_into_cache"] == calls["cache_attention"] == (steps + 1) * L
        assert calls["silu_gemv"] == steps * L and calls["norm_gemv"] == steps * 2 * L


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_layer_op_equals_its_six_kernels(cpu_reference, cuda, monkeypatch, dtype):
    """decode_layer launches the same kernels in the same order as the six-op path: the logits
    of a decode step, and the cache it writes, are bit-identical."""
    state, tokens, _ = cpu_reference["llama"]
    got = {}
    for layer_op in (True, False):
        with options.override(layer_op=layer_op, exact="off"):
            got[layer_op] = forced_logits(build("llama", state, dtype, fused=True), PROMPT, tokens[:6])
    np.testing.assert_array_equal(got[True], got[False])




def test_rows_layer_equals_its_kernels(cpu_reference, cuda, monkeypatch):
    """rows_layer (a tree's or a short prompt's layer in one op) launches the kernels of the
    op-by-op path with the same shapes: the prompt's logits and the decode steps after it are
    bit-identical, and Medusa's tree steps go through it."""
    state, tokens, _ = cpu_reference["llama"]
    got, calls = {}, []
    real = ck.rows_layer
    monkeypatch.setattr(ck, "rows_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    # rows_layer keeps the per-row attention
    with options.override(rows_layer=True, tree_attention=False, layer_op=True, exact="off"):
        for layer_op in (True, False):
            with options.override(layer_op=layer_op):
                got[layer_op] = forced_logits(build("llama", state, "float16", fused=True), PROMPT, tokens[:4])
        np.testing.assert_array_equal(got[True], got[False])
        assert len(calls) == CONFIGS["llama"]["num_hidden_layers"]      # the 16-token prompt, layer op on
        model = build("llama", state, "float16", fused=True)
        plain = generate(model, PROMPT, STEPS).output_ids
        plain_margins = margins(forced_logits(model, PROMPT, plain[:-1]))
        out = medusa_generate(model, random_heads(model, "medusa", share=True), PROMPT, STEPS, "mc_sim_7b_63")
    assert_same_up_to_near_ties(out.output_ids, plain, plain_margins)
    assert len(calls) > 3 * CONFIGS["llama"]["num_hidden_layers"]


@pytest.mark.parametrize("tree", ["8_node", "mc_sim_7b_63"])
def test_flash_tree_attention_in_medusa_is_lossless(cpu_reference, cuda, monkeypatch, tree):
    """The fused fp16 model's tree steps with their attention as flash_tree (rows_layer off, so
    each layer's attention is its own op): plain greedy's tokens up to fp16 near-ties."""
    from medusa.kernels.cuda import attention as attention_kernels

    state, tokens, _ = cpu_reference["llama"]
    with options.override(rows_layer=False, exact="off"):
        model = build("llama", state, "float16", fused=True)
        plain = generate(model, PROMPT, STEPS).output_ids
        plain_margins = margins(forced_logits(model, PROMPT, plain[:-1]))
        monkeypatch.setattr(attention_kernels, "FLASH_MIN_ROWS", 2)    # 8_node: 18 rows a kv head here
        with options.override(tree_attention=True):
            out = medusa_generate(model, random_heads(model, "medusa", share=True), PROMPT, STEPS, tree)
    assert_same_up_to_near_ties(out.output_ids, plain, plain_margins)


@pytest.mark.parametrize("tree", ["8_node", "mc_sim_7b_63"])
def test_device_loop_on_cuda(cpu_reference, cuda, monkeypatch, tree):
    """decoding's device loop (one fetch a step, the path moved in the cache by compact_cache_at)
    gives the host loop's tokens and accept lengths on CUDA; oracle heads accept full depth."""
    state, tokens, _ = cpu_reference["llama"]
    model = build("llama", state, "float32", fused=True)
    heads = random_heads(model, "medusa", share=False)
    with options.override(device_loop="off"):
        host = medusa_generate(model, heads, PROMPT, STEPS, tree)
    with options.override(device_loop="auto"):                     # the default: on a GPU
        device = medusa_generate(model, heads, PROMPT, STEPS, tree)
        oracle = medusa_generate(model, OracleHeads(model, PROMPT + tokens), PROMPT, 21, "8_node")
    assert device.output_ids == host.output_ids == tokens and device.accept_lengths == host.accept_lengths
    assert oracle.output_ids == tokens[:21] and oracle.accept_lengths == [5] * 4
    # rnn heads with a prefix layer (depth-by-depth drafting and the prefix layer on the device)
    jt.set_global_seed(0)
    rnn = build_heads(HeadConfig(family="rnn", num_heads=4, hidden_size=model.config.hidden_size,
                                 vocab_size=model.config.vocab_size, share_lm_head=True, prefix_layer=True))
    with options.override(device_loop="off"):
        host = medusa_generate(model, rnn, PROMPT, STEPS, tree)
    with options.override(device_loop="on"):
        device = medusa_generate(model, rnn, PROMPT, STEPS, tree)
    assert device.output_ids == host.output_ids == tokens and device.accept_lengths == host.accept_lengths


# ---------------------------------------------------------------- the exact option: the same bits on every path
def same_bits(got, want):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("M,K,N", [(9, 576, 960), (64, 1536, 576), (33, 576, 49152)])
def test_mma_rows_is_deterministic_and_row_invariant(cuda, M, K, N):
    """No atomics: the same product twice gives the same bits, and a row's result does not
    depend on the rows beside it (a lone row, any subset) nor on the weight's size rule."""
    x, w = rand((1, M, K), "float16", 40), rand((K, N), "float16", 41, 0.05)
    full = ck.mma_rows(x, w).numpy()
    same_bits(ck.mma_rows(x, w).numpy(), full)
    for r in (0, M // 2, M - 1):
        assert ck.mma_rows_ok(x[:, r:r + 1], w, exact=True)
        same_bits(ck.mma_rows(x[:, r:r + 1], w).numpy()[0, 0], full[0, r])
    same_bits(ck.mma_rows(x[:, 1:M - 1], w).numpy(), full[:, 1:M - 1])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("K,N", [(576, 960), (1536, 576), (576, 49152)])
def test_gemv_rows_equal_lone_rows(cuda, dtype, K, N):
    """gemv, norm_gemv and silu_gemv over several rows: each row's bits are those of the row
    alone (the exact option's `decode` mode), and close to the reference."""
    T = 9
    x, d, w = rand((1, T, K), dtype, 42), rand((1, T, K), dtype, 43), rand((K, N), dtype, 44, 0.05)
    nw, gu = rand((K,), dtype, 45, 0.1) + 1, rand((1, T, 2 * K), dtype, 46)
    many = {"plain": ck.gemv(x, w).numpy(), "norm": [a.numpy() for a in ck.norm_gemv(x, d, nw, 1e-6, w)],
            "silu": ck.silu_gemv(gu, w).numpy()}
    close(ck.gemv(x, w), jt.matmul(x.float32(), w.float32()).cast(dtype), dtype)
    for r in (0, 4, T - 1):
        one = slice(r, r + 1)
        same_bits(ck.gemv(x[:, one], w).numpy()[0, 0], many["plain"][0, r])
        h, y = ck.norm_gemv(x[:, one], d[:, one], nw, 1e-6, w)
        same_bits(h.numpy()[0, 0], many["norm"][0][0, r])
        same_bits(y.numpy()[0, 0], many["norm"][1][0, r])
        same_bits(ck.silu_gemv(gu[:, one], w).numpy()[0, 0], many["silu"][0, r])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tree_attention_row_equals_the_decode_step_of_its_path(cuda, dtype):
    """cache_attention visits a row's visible keys in logical order: a tree node's row (its
    ancestors scattered among the tree's other nodes) gives the bits of a one-token step whose
    cache holds the same prefix and then the ancestors, in order."""
    H, G, D, past = 2, 3, 64, 37
    tree = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0, 0]]
    parents = {(): 0}
    for n, p in enumerate(tree, start=1):
        parents[tuple(p)] = n
    T = len(tree) + 1
    ancestry = [[0]] + [[parents[tuple(p[:k])] for k in range(len(p) + 1)] for p in tree]   # root..node
    block = np.zeros((T, T), bool)
    for n, chain in enumerate(ancestry):
        block[n, chain] = True
    L, S = past + T + 5, past + T
    keys, values = rand((1, H, L, D), dtype, 47), rand((1, H, L, D), dtype, 48)
    q = rand((1, H, G * T, D), dtype, 49)                           # row g * T + t
    m = np.zeros((1, 1, T, S), np.float32)
    m[0, 0, :, past:] = np.where(block, 0.0, -1e9)
    with options.override(tree_attention=False):
        rows = ck.cache_attention(q, keys, values, S, jt.array(m), D ** -0.5).numpy()
    k_np, v_np, q_np = keys.numpy(), values.numpy(), q.numpy()
    for node in (len(tree), 6, 3):
        chain = ancestry[node]
        order = list(range(past)) + [past + a for a in chain]
        k1 = np.zeros_like(k_np)
        v1 = np.zeros_like(v_np)
        k1[:, :, :len(order)], v1[:, :, :len(order)] = k_np[:, :, order], v_np[:, :, order]
        q1 = q_np[:, :, [g * T + node for g in range(G)]]
        one = ck.cache_attention(jt.array(q1), jt.array(k1), jt.array(v1), len(order), None, D ** -0.5).numpy()
        same_bits(one, rows[:, :, [g * T + node for g in range(G)]])


@pytest.mark.parametrize("exact", ["decode", "tree"])
@pytest.mark.parametrize("tree", ["chain", "8_node", "mc_sim_7b_63"])
def test_exact_tree_rows_equal_decode_steps_bit_for_bit(cpu_reference, cuda, exact, tree):
    """Under the exact option the fp16 logits of a tree's nodes along a path (the last leaf's:
    its nodes sit far from their depths) are bit for bit those of plain greedy's one-token
    steps over the same tokens: the tree's rows and the decode steps take the same kernels."""
    from medusa.decoding.core import forward, new_cache, prefill
    from medusa.decoding.tree_vars import resolve_tree

    state, _, _ = cpu_reference["llama"]
    with options.override(exact=exact, tree_attention=False):
        model = build("llama", state, "float16", fused=True)
        assert model.exact_mode() == exact
        plain = generate(model, PROMPT, STEPS).output_ids
        t = resolve_tree(tree, 4)
        path = t.buffers.retrieve_indices[-1]
        path = path[path >= 0]
        tokens = np.random.default_rng(3).integers(6, 320, t.num_nodes)
        tokens[path] = plain[:len(path)]
        want = forced_logits(model, PROMPT, plain[:len(path)])
        cache = new_cache(model, 1, len(PROMPT) + t.num_nodes)
        prefill(model, cache, PROMPT)
        hidden = forward(model, jt.array(tokens.astype(np.int32)[None]), t.positions + cache.length,
                         t.mask(cache.length), cache)
        got = model.logits(hidden)[0].numpy()[path]
    same_bits(got.astype(np.float64), want[1:len(path) + 1])


@pytest.mark.parametrize("exact", ["decode", "tree"])
@pytest.mark.parametrize("device_loop", ["on", "off"])
def test_exact_medusa_greedy_equals_plain_greedy_in_fp16(cpu_reference, cuda, exact, device_loop):
    """fp16, near-ties included: Medusa's greedy tokens are plain greedy's exactly (no near-tie
    allowance), for heads that draft the continuation (oracle: every step accepts full depth)
    and random heads, on the host loop and the device loop; plain greedy twice is the same."""
    state, _, _ = cpu_reference["llama"]
    flat = {k: v * 0.3 for k, v in state.items()}            # flatter logits: many near-ties
    with options.override(exact=exact, device_loop=device_loop, tree_attention=False):
        model = build("llama", flat, "float16", fused=True)
        plain = generate(model, PROMPT, STEPS).output_ids
        assert generate(build("llama", flat, "float16", fused=True), PROMPT, STEPS).output_ids == plain
        oracle = medusa_generate(model, OracleHeads(model, PROMPT + plain), PROMPT, 21, "8_node")
        assert oracle.output_ids == plain[:21] and max(oracle.accept_lengths) == 5
        for tree in ("8_node", "mc_sim_7b_63"):
            out = medusa_generate(model, random_heads(model, "medusa", share=True), PROMPT, STEPS, tree)
            assert out.output_ids == plain, tree


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cache_attention_row_that_sees_no_key_stays_finite(cuda, dtype):
    """A left-padded prompt's pad rows see no key at all (start 0, every new key masked): the
    kernel reads every key, all masked, as before its logical key order (not 0 / 0)."""
    from medusa.model.transformer import attention

    H, G, T, D = 2, 2, 5, 64
    q, keys, values = rand((1, H, G * T, D), dtype, 50), rand((1, H, T, D), dtype, 51), rand((1, H, T, D), dtype, 52)
    m = np.where(np.tril(np.ones((T, T), bool)), 0.0, -1e9).astype(np.float32)
    m[:2] = -1e9                                                   # rows 0 and 1: pads
    mask = jt.array(m[None, None])
    got = ck.cache_attention(q, keys, values, T, mask, D ** -0.5)
    assert np.isfinite(got.numpy()).all()
    close(got, attention(q, keys, values, mask, D ** -0.5), dtype)
