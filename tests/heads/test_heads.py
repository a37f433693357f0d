"""Draft-head families: shapes, gradients, init identities, causality, routing, learning."""
import numpy as np
import pytest

from medusa.heads.families import HEAD_FAMILIES, HeadConfig, build_heads, route
from medusa.runtime.backend import jt

H, V, K, B, T = 32, 50, 3, 2, 5
FAMILIES = sorted(HEAD_FAMILIES)


def make(family, share=False, num_layers=1, **kw):
    jt.set_global_seed(0)
    cfg = HeadConfig(family=family, num_heads=K, num_layers=num_layers, hidden_size=H,
                     vocab_size=V, share_lm_head=share, **kw)
    return build_heads(cfg)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jt.array(rng.standard_normal((B, T, H)).astype("float32"))
    tokens = jt.array(rng.integers(0, V, (B, T, K)).astype("int32"))
    targets = jt.array(rng.integers(0, V, (K, B, T)).astype("int32"))
    lm = jt.array(rng.standard_normal((H, V)).astype("float32") / np.sqrt(H))
    emb = jt.array(rng.standard_normal((V, H)).astype("float32"))
    return hidden, tokens, targets, lm, emb


def loss_of(heads, hidden, tokens, targets, lm, emb):
    logits, aux = heads(hidden, tokens, lm, emb)
    ce = jt.nn.cross_entropy_loss(logits.reshape(-1, V), targets.reshape(-1))
    return ce + 0.01 * aux


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_and_dtypes(family, share):
    heads = make(family, share, num_layers=2)
    hidden, tokens, _, lm, emb = batch()
    logits, aux = heads(hidden.float16(), tokens, lm, emb)  # fp16 states are cast to fp32
    assert tuple(logits.shape) == (K, B, T, V) and logits.dtype == "float32"
    assert aux.numel() == 1 and aux.dtype == "float32"
    assert heads.config.family == family and heads.sequential == (family == "rnn")
    assert heads.num_parameters() == sum(int(np.prod(p.shape)) for p in heads.parameters())
    has_vocab = any(p.shape[-1] == V for p in heads.parameters())
    assert has_vocab == (not share)


def test_shared_head_requires_base_weight():
    heads = make("medusa", share=True)
    hidden, *_ = batch()
    with pytest.raises(ValueError, match="lm_head_t"):
        heads(hidden)


def test_rnn_requires_tokens_and_embeddings():
    heads = make("rnn")
    hidden, tokens, _, lm, emb = batch()
    with pytest.raises(ValueError, match="tokens"):
        heads(hidden, None, lm, emb)
    with pytest.raises(ValueError, match="tokens must be"):
        heads(hidden, tokens[:, :, :2], lm, emb)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gets_gradient(family, share):
    heads = make(family, share, num_layers=2)
    hidden, tokens, targets, lm, emb = batch()
    heads.init_from_base(lm)  # copied projections stay trainable
    params = heads.parameters()
    opt = jt.optim.SGD(params, 0.1)
    opt.backward(loss_of(heads, hidden, tokens, targets, lm, emb))
    for name, p in heads.named_parameters():
        g = p.opt_grad(opt).numpy()
        assert np.isfinite(g).all() and np.abs(g).max() > 0, f"{family}: no gradient into {name}"


@pytest.mark.parametrize("family", FAMILIES)
def test_base_weights_stay_frozen(family):
    heads = make(family, share=True)
    hidden, tokens, targets, lm, emb = batch()
    loss = loss_of(heads, hidden, tokens, targets, lm, emb)
    g_lm, g_emb = jt.grad(loss, [lm, emb])
    assert np.abs(g_lm.numpy()).max() == 0 and np.abs(g_emb.numpy()).max() == 0
    assert not lm.is_stop_grad()  # the caller's Var itself is left untouched


def test_medusa_at_init_equals_base_lm_head():
    heads = make("medusa", num_layers=2)
    hidden, _, _, lm, _ = batch()
    heads.init_from_base(lm.numpy())
    logits, aux = heads(hidden)
    expected = hidden.numpy() @ lm.numpy()
    for k in range(K):
        np.testing.assert_allclose(logits.numpy()[k], expected, rtol=1e-5, atol=1e-5)
    assert aux.item() == 0
    shared, _ = make("medusa", share=True)(hidden, lm_head_t=lm)
    np.testing.assert_allclose(shared.numpy()[0], expected, rtol=1e-5, atol=1e-5)


def test_init_from_base_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected"):
        make("medusa").init_from_base(np.zeros((H, V + 1), "float32"))


def test_rnn_is_causal_over_depth():
    heads = make("rnn", num_layers=1)
    hidden, tokens, _, lm, emb = batch()
    base = heads(hidden, tokens, lm, emb)[0].numpy()
    for k in range(K):
        changed = tokens.numpy().copy()
        changed[..., k] = (changed[..., k] + 7) % V
        out = heads(hidden, jt.array(changed), lm, emb)[0].numpy()
        for j in range(K):
            moved = np.abs(out[j] - base[j]).max()
            if j < k:
                assert moved == 0, f"head {j} depends on tokens[..., {k}]"
            else:
                assert moved > 1e-4, f"head {j} ignores tokens[..., {k}]"


def test_route_renormalises_top_k():
    probs = jt.nn.softmax(jt.randn(4, 6, 5), dim=-1)
    weights, mask = route(probs, 2)
    w, m = weights.numpy(), mask.numpy()
    np.testing.assert_allclose(w.sum(-1), 1, rtol=1e-6)
    assert (m.sum(-1) == 2).all() and (w[m == 0] == 0).all()
    top2 = np.sort(probs.numpy(), -1)[..., -2:]
    np.testing.assert_allclose(np.sort(w, -1)[..., -2:], top2 / top2.sum(-1, keepdims=True), rtol=1e-5)
    soft, _ = route(probs, 5)
    np.testing.assert_allclose(soft.numpy(), probs.numpy())


def test_moe_aux_loss_and_router_gradient():
    heads = make("moe", num_layers=1, moe_num_experts=4, moe_top_k=2)
    hidden, tokens, targets, lm, emb = batch()
    logits, aux = heads(hidden)
    assert aux.item() > 0
    routers = [p for n, p in heads.named_parameters() if "router" in n]
    assert len(routers) == K
    ce = jt.nn.cross_entropy_loss(logits.reshape(-1, V), targets.reshape(-1))
    for g in jt.grad(ce, routers) + jt.grad(aux, routers):  # both losses reach the router
        assert np.abs(g.numpy()).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_steps_lower_the_loss(family):
    heads = make(family, share=False)
    hidden, tokens, targets, lm, emb = batch()
    lm_before = lm.numpy().copy()
    heads.init_from_base(lm)
    opt = jt.optim.Adam(heads.parameters(), 1e-2)
    losses = []
    for _ in range(8):
        loss = loss_of(heads, hidden, tokens, targets, lm, emb)
        losses.append(loss.item())
        opt.step(loss)
    assert losses[-1] < 0.8 * losses[0], losses
    np.testing.assert_array_equal(lm.numpy(), lm_before)  # training the copies leaves the base alone


def test_config_round_trip_and_rejections():
    cfg = HeadConfig(family="moe", num_heads=2, hidden_size=8, vocab_size=10, moe_top_k=3)
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown head family 'eagle'"):
        HeadConfig.from_dict({**cfg.to_dict(), "family": "eagle"})
    with pytest.raises(ValueError, match="unknown HeadConfig key.*medusa_num_heads"):
        HeadConfig.from_dict({**cfg.to_dict(), "medusa_num_heads": 5})
    with pytest.raises(ValueError, match="moe_top_k"):
        HeadConfig(family="moe", hidden_size=8, vocab_size=10, moe_top_k=1)
    with pytest.raises(ValueError, match="hidden_size"):
        HeadConfig(family="medusa", vocab_size=10)


def test_layers_are_separate_modules():
    heads = make("medusa", num_layers=3)
    ids = {id(block) for layers in heads.blocks for block in layers}
    assert len(ids) == K * 3


@pytest.mark.parametrize("family", ["medusa", "rnn", "moe"])
@pytest.mark.parametrize("share", [False, True])
def test_project_computes_only_the_wanted_heads(family, share):
    heads = make(family, share=share)
    hidden, tokens, _, lm, emb = batch()
    full = heads(hidden, tokens, lm, emb)[0].numpy()
    some = heads(hidden, tokens, lm, emb, project=[2, 0])[0].numpy()
    if share:       # one [K', H] x [H, V] product: its kernel depends on the row count K'
        np.testing.assert_allclose(some, full[[2, 0]], rtol=1e-5, atol=1e-6)
    else:           # the same computation, fewer heads of it
        np.testing.assert_array_equal(some, full[[2, 0]])


def test_rnn_runs_its_cell_only_up_to_the_deepest_wanted_head(monkeypatch):
    """Drafting depth d of a tree needs cell steps 0..d and readout d alone (decoding asks one
    depth at a time): 1 + 2 + 3 + 4 = 10 cell steps for a 4-deep tree, not 16."""
    heads = make("rnn", share=True)
    hidden, tokens, _, lm, emb = batch()
    calls = []
    real = type(heads.cell).execute
    monkeypatch.setattr(type(heads.cell), "execute", lambda self, *a: calls.append(1) or real(self, *a))
    for d in range(heads.config.num_heads):
        heads(hidden, tokens, lm, emb, project=[d])
    assert len(calls) == sum(range(1, heads.config.num_heads + 1))


def test_shared_fp16_lm_head_projects_in_fp16_only_without_gradients():
    """Decoding (no gradients) takes the product in the base's dtype; training stays fp32."""
    heads = make("medusa", share=True)
    hidden, _, _, lm, _ = batch()
    lm16 = lm.float16()
    exact = hidden.numpy() @ lm16.numpy().astype(np.float32)
    with_grad = heads(hidden, lm_head_t=lm16)[0]
    np.testing.assert_allclose(with_grad.numpy()[0], exact, rtol=1e-5, atol=1e-5)
    with jt.no_grad():
        fast = heads(hidden, lm_head_t=lm16)[0]
    assert fast.dtype == "float32"
    fast = fast.numpy()[0]
    assert not np.array_equal(fast, exact)   # the product was taken in fp16: inputs and output rounded
    rounded = hidden.numpy().astype(np.float16).astype(np.float32) @ lm16.numpy().astype(np.float32)
    np.testing.assert_allclose(fast, rounded, atol=1e-2)  # fp16 accumulation


# ---------------------------------------------------------------- Hydra++'s prefix layer
def _nonzero_outputs(heads, seed=1):
    """Give the prefix layer's zero-initialised output projections random weights."""
    rng = np.random.default_rng(seed)
    for layer in (heads.prefix.o, heads.prefix.down):
        layer.weight.assign(jt.array(rng.standard_normal(layer.weight.shape).astype("float32") * 0.2))
    return heads


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_layer_starts_as_the_identity(family):
    hidden, tokens, _, lm, emb = batch()
    plain, prefixed = make(family), make(family, prefix_layer=True)
    for name, p in plain.named_parameters():
        dict(prefixed.named_parameters())[name].assign(p)
    np.testing.assert_array_equal(prefixed(hidden, tokens, lm, emb)[0].numpy(), plain(hidden, tokens, lm, emb)[0].numpy())
    assert prefixed.num_parameters() > plain.num_parameters()


def test_prefix_layer_is_causal_and_reads_step_by_step_like_a_whole_sequence():
    heads = _nonzero_outputs(make("rnn", prefix_layer=True))
    hidden, tokens, _, lm, emb = batch()
    whole = heads.prefix(hidden)[0].numpy()
    changed = hidden.numpy().copy()
    changed[:, 3:] += 1.0                                        # later positions never reach earlier ones
    np.testing.assert_allclose(heads.prefix(jt.array(changed))[0].numpy()[:, :3], whole[:, :3], atol=1e-6)
    assert np.abs(heads.prefix(jt.array(changed))[0].numpy()[:, 3:] - whole[:, 3:]).max() > 1e-3
    state = heads.prefix_state()
    with jt.no_grad():                                           # decoding: the prompt, then accepted paths
        for lo, hi in ((0, 2), (2, 3), (3, 5)):
            got = heads.read_prefix(state, hidden[:1, lo:hi]).numpy()
            np.testing.assert_allclose(got[0, 0], whole[0, hi - 1], atol=1e-5)
    assert make("rnn").prefix_state() is None


def test_prefix_layer_gets_gradient_and_checks_its_heads():
    heads = _nonzero_outputs(make("rnn", prefix_layer=True))
    hidden, tokens, targets, lm, emb = batch()
    opt = jt.optim.SGD(heads.parameters(), 0.1)
    opt.backward(loss_of(heads, hidden, tokens, targets, lm, emb))
    for name, p in heads.named_parameters():
        if name.startswith("prefix."):
            assert np.abs(p.opt_grad(opt).numpy()).max() > 0, f"no gradient into {name}"
    with pytest.raises(ValueError, match="prefix_heads=5 must divide hidden_size=32"):
        make("rnn", prefix_layer=True, prefix_heads=5)
    assert HeadConfig.from_dict(make("rnn", prefix_layer=True).config.to_dict()).prefix_layer
