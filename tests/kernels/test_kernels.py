"""medusa/kernels/cpu.py against Jittor's own matmul (fp32 tolerance) on odd shapes, its gradients, and
that model.matmul really dispatches to it on the CPU."""
import numpy as np
import pytest

import medusa.runtime.options as options
from medusa.kernels import cpu as kernels
from medusa.model import transformer as model_lib
from medusa.model import weights
from medusa.runtime.backend import jt

RTOL, ATOL = 1e-4, 1e-4


def rand(*shape, seed=0):
    return jt.array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def close(a, b):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL)


@pytest.fixture
def counted(monkeypatch):
    """{kernel name: calls} of the kernels model.matmul picks (wrapped in place)."""
    calls = {}
    for name in ("blas_matmul", "small_rows_matmul", "reference_matmul"):
        original = getattr(kernels, name)

        def wrapper(*args, _name=name, _original=original):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args)
        monkeypatch.setattr(kernels, name, wrapper)
    return calls


@pytest.mark.parametrize("lead", [(1,), (7,), (63,), (3, 7), (2, 1)])
@pytest.mark.parametrize("K, N", [(37, 29), (576, 96)])
def test_blas_matmul_equals_jittor_for_weights(lead, K, N):
    x, w = rand(*lead, K), rand(K, N, seed=1)
    y = kernels.blas_matmul(x, w)
    assert list(y.shape) == [*lead, N]
    close(y, kernels.reference_matmul(x, w))


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M, K, N", [(1, 37, 29), (7, 64, 13), (63, 37, 130)])
def test_blas_matmul_equals_jittor_batched(M, K, N, trans_b):
    a = rand(2, 3, M, K)
    b = rand(2, 3, N, K, seed=1) if trans_b else rand(2, 3, K, N, seed=1)   # attention: k [B, H, S, D]
    close(kernels.blas_matmul(a, b, trans_b), kernels.reference_matmul(a, b, trans_b))


@pytest.mark.parametrize("trans_b", [False, True])
def test_blas_gradients_equal_jittor(trans_b):
    a = rand(2, 7, 37)
    b = rand(2, 29, 37, seed=1) if trans_b else rand(37, 29, seed=1)
    target = rand(2, 7, 29, seed=2)
    grads = [jt.grad(((f(a, b, trans_b) - target) ** 2).sum(), [a, b])
             for f in (kernels.blas_matmul, kernels.reference_matmul)]
    for mine, ref in zip(*grads):
        close(mine, ref)


@pytest.mark.parametrize("lead", [(1,), (7,), (16,), (1, 9)])
@pytest.mark.parametrize("K, N", [(37, 64), (1, 32), (576, 1536)])
def test_small_rows_matmul_equals_jittor(lead, K, N):
    x, w = rand(*lead, K), rand(K, N, seed=1).stop_grad()
    with jt.no_grad():
        y = kernels.small_rows_matmul(x, w)
    assert list(y.shape) == [*lead, N]
    close(y, kernels.reference_matmul(x, w))


def test_small_rows_gradient_reaches_x_only():
    x, w = rand(2, 5, 37), rand(37, 64, seed=1).stop_grad()     # training heads on the frozen lm_head
    target = rand(2, 5, 64, seed=2)
    mine, ref = (jt.grad(((f(x, w) - target) ** 2).sum(), x)
                 for f in (kernels.small_rows_matmul, kernels.reference_matmul))
    close(mine, ref)


def test_small_rows_matmul_repacks_an_assigned_weight():
    x, w = rand(3, 37), rand(37, 64, seed=1).stop_grad()
    with jt.no_grad():
        kernels.small_rows_matmul(x, w).sync()
        w.assign(rand(37, 64, seed=2))            # a new Var id: the packed copy must not be reused
        close(kernels.small_rows_matmul(x, w), kernels.reference_matmul(x, w))


def test_thread_count_does_not_change_results():
    x, w = rand(9, 576), rand(576, 1536, seed=1)
    before = kernels.num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            assert kernels.set_num_threads(n) == n
            results.append(kernels.blas_matmul(x, w).numpy())
        # each thread count may sum in another order (OpenBLAS picks kernels per block shape), so
        # the bound is fp32 rounding of the 576-term sums, |x| @ |w| scaled, not a fixed atol
        # (an element near 0 of a row whose terms reach ~50 differed by 4e-5: allowed, and right)
        xs, ws = x.numpy().astype(np.float64), w.numpy().astype(np.float64)
        exact, scale = xs @ ws, np.abs(xs) @ np.abs(ws)
        for n, r in zip((1, 2, 3), results):
            err = np.abs(r - exact) / scale
            assert err.max() < 1e-5, f"{n} threads: error {err.max():.2e} of |x| @ |w|"
        for r in results[1:]:
            assert (np.abs(r - results[0]) / scale).max() < 2e-5
    finally:
        kernels.set_num_threads(before)
    with pytest.raises(ValueError):
        kernels.set_num_threads(-1)


def test_model_matmul_dispatch(counted):
    w_small, w_vocab = rand(37, 64).stop_grad(), rand(37, 1 << 17).stop_grad()
    with jt.no_grad():
        model_lib.matmul(rand(9, 37), w_small)          # a tree's rows: the few-rows kernel
        model_lib.matmul(rand(1, 1, 37), w_small)       # one token, small weight: Jittor's loop
        model_lib.matmul(rand(1, 37), w_vocab)          # one token, vocab-sized weight: BLAS gemv
        model_lib.matmul(rand(kernels.SMALL_ROWS + 1, 37), w_small)   # many rows: BLAS
    assert counted == {"small_rows_matmul": 1, "reference_matmul": 1, "blas_matmul": 2}
    counted.clear()
    model_lib.matmul(rand(9, 37), rand(37, 64))         # gradients wanted: BLAS, never the packed copy
    assert counted == {"blas_matmul": 1}
    counted.clear()
    previous = kernels.use_blas()
    kernels.use_blas(False)
    try:
        model_lib.matmul(rand(9, 37), w_small)
    finally:
        kernels.use_blas(previous)
    assert counted == {"reference_matmul": 1}


def test_tiny_model_runs_the_kernels_and_matches_jittor(tiny_pkl, counted):
    net = weights.load_model(tiny_pkl("llama"), "float32")
    T = kernels.SMALL_ROWS + 7                                      # a prompt: BLAS; its first 7: few rows
    tokens = jt.array(np.arange(3, 3 + T, dtype=np.int32)[None])
    positions = jt.array(np.arange(T, dtype=np.int32)[None])
    mask = model_lib.build_mask(1, T)
    logits = {}
    for on in (True, False):
        kernels.use_blas(on)
        try:
            with jt.no_grad():
                logits[on] = net.logits(net(tokens[:, :7], positions[:, :7], mask[:, :, :7, :7])).numpy(), \
                    net.logits(net(tokens, positions, mask)).numpy()
        finally:
            kernels.use_blas(True)
    assert counted.get("small_rows_matmul", 0) > 0 and counted.get("blas_matmul", 0) > 0
    for mine, ref in zip(logits[True], logits[False]):
        np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B, H, G, T, S, D", [(1, 3, 3, 1, 5, 64), (1, 3, 3, 7, 70, 64), (2, 2, 1, 63, 100, 12),
                                             (1, 3, 3, 64, 120, 64), (1, 1, 2, 9, 9, 20)])
def test_fused_attention_equals_jittor(B, H, G, T, S, D):
    q, k, v = rand(B, H, G * T, D, seed=1), rand(B, H, S, D, seed=2), rand(B, H, S, D, seed=3)
    masked = np.random.default_rng(4).random((B, T, S)) < 0.4        # a tree mask: some keys hidden
    masked[:, :, -1] = False                                           # each row sees itself
    mask = jt.array(np.where(masked, model_lib.NEG_INF, 0.0).astype(np.float32))
    previous = kernels.use_blas()                                   # model.attention through Jittor's ops
    kernels.use_blas(False)
    try:
        with jt.no_grad():
            reference = model_lib.attention(q, k, v, mask.reshape(B, 1, T, S), D ** -0.5)
    finally:
        kernels.use_blas(previous)
    with jt.no_grad():
        close(kernels.fused_attention(q, k, v, mask, D ** -0.5), reference)
    with pytest.raises(ValueError, match="do not match"):
        kernels.fused_attention(q, k, v, mask[:, :, :-1], 1.0)


def test_model_attention_dispatch(tiny_pkl, monkeypatch):
    calls = []
    original = kernels.fused_attention
    monkeypatch.setattr(kernels, "fused_attention", lambda *a: calls.append(1) or original(*a))
    net = weights.load_model(tiny_pkl("qwen2"), "float32")
    tokens = jt.array(np.arange(3, 12, dtype=np.int32)[None])
    positions = jt.array(np.arange(9, dtype=np.int32)[None])
    with jt.no_grad():
        fused = net(tokens, positions, model_lib.build_mask(1, 9)).numpy()
    assert len(calls) == net.config.num_hidden_layers                 # every layer, inference on the CPU
    previous = kernels.use_blas()
    kernels.use_blas(False)
    try:
        with jt.no_grad():
            ref = net(tokens, positions, model_lib.build_mask(1, 9)).numpy()
    finally:
        kernels.use_blas(previous)
    assert len(calls) == net.config.num_hidden_layers                 # off with the kernels
    np.testing.assert_allclose(fused, ref, rtol=RTOL, atol=ATOL)


def test_flash_tree_routing(monkeypatch):
    """Which tree attention flash_tree takes (the rest go to the per-row kernel): masked fp16 with
    at least FLASH_MIN_ROWS rows a kv head, head_dim 64 or 128, up to FLASH_MAX_KEYS keys, and
    only while its switch is on ($MEDUSA_TREE_ATTENTION, on by default)."""
    from medusa.kernels.cuda import attention

    rows, keys = attention.FLASH_MIN_ROWS, attention.FLASH_MAX_KEYS
    with options.override(tree_attention=True):
        assert attention.flash_tree_ok("float16", 128, rows, keys, True)
        assert attention.flash_tree_ok("float16", 64, 192, 300, True)
        assert not attention.flash_tree_ok("float16", 128, rows - 1, 300, True)    # few rows: per-row kernel
        assert not attention.flash_tree_ok("float16", 128, rows, keys + 1, True)
        assert not attention.flash_tree_ok("float16", 128, rows, 300, False)       # no mask: decode
        assert not attention.flash_tree_ok("float32", 128, rows, 300, True)
        assert not attention.flash_tree_ok("float16", 96, rows, 300, True)
    with options.override(tree_attention=False):
        assert not attention.flash_tree_ok("float16", 128, rows, 300, True)
    assert options.from_environ({}).tree_attention
    assert not options.from_environ({"MEDUSA_TREE_ATTENTION": "0"}).tree_attention
