"""The Jittor base models against Hugging Face transformers (torch, CPU, fp32): logits at prefill and
at every cached decode step, greedy ids, padded batches, KV cache compaction."""
import numpy as np
import pytest
import support
import torch

from medusa.decoding.core import generate
from medusa.model import weights
from medusa.model.kvcache import KVCache
from medusa.model.transformer import build_mask
from medusa.runtime.backend import jt

PROMPT = [4, 17, 42, 99, 7, 123, 250, 61, 8, 300]
ATOL = 2e-4


def run(model, tokens, positions, mask=None, cache=None):
    ids = jt.array(np.asarray(tokens, dtype=np.int32))
    pos = jt.array(np.asarray(positions, dtype=np.int32))
    return model.logits(model(ids, pos, mask, cache)).numpy()


@pytest.fixture(scope="module")
def pair(tiny_hf, tiny_pkl):
    """(jittor model, transformers model) per family, loaded once per module."""
    loaded = {}

    def get(family):
        if family not in loaded:
            loaded[family] = (weights.load_model(tiny_pkl(family), "float32"),
                              support.load_reference(tiny_hf(family)))
        return loaded[family]
    return get


@pytest.mark.parametrize("family", support.FAMILIES)
def test_logits_match_transformers_at_prefill_and_each_cached_step(pair, family):
    model, ref = pair(family)
    steps = 8
    with torch.no_grad():
        full = ref(torch.tensor([PROMPT])).logits[0].numpy()
    T = len(PROMPT)
    cache = KVCache(model.config, 1, T + steps, "float32")
    got = run(model, [PROMPT], [np.arange(T)], build_mask(1, T), cache)[0]
    np.testing.assert_allclose(got, full, atol=ATOL, rtol=0)
    ids = list(PROMPT)
    for _ in range(steps):  # feed the reference's own greedy tokens, compare every step's logits
        ids.append(int(np.argmax(full[-1])))
        with torch.no_grad():
            full = ref(torch.tensor([ids])).logits[0].numpy()
        step = run(model, [[ids[-1]]], [[len(ids) - 1]], None, cache)[0, 0]
        np.testing.assert_allclose(step, full[-1], atol=ATOL, rtol=0)
    assert cache.length == T + steps


@pytest.mark.parametrize("family", support.FAMILIES)
def test_greedy_ids_match_transformers_generate(pair, family):
    model, ref = pair(family)
    expected = support.reference_greedy(ref, PROMPT, 32)
    assert generate(model, PROMPT, 32).output_ids == expected


def test_padded_batch_equals_unpadded_samples(pair):
    model, _ = pair("qwen2")
    a, b = PROMPT, PROMPT[3:8]
    T = len(a)
    tokens = [a, b + [0] * (T - len(b))]                # right-padded
    padding = [[1] * T, [1] * len(b) + [0] * (T - len(b))]
    batch = run(model, tokens, [np.arange(T)] * 2, build_mask(2, T, padding=padding))
    alone_a = run(model, [a], [np.arange(T)], build_mask(1, T))
    alone_b = run(model, [b], [np.arange(len(b))], build_mask(1, len(b)))
    np.testing.assert_allclose(batch[0], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(batch[1, :len(b)], alone_b[0], atol=1e-5)


def test_tree_mask_with_explicit_positions_equals_separate_branches(pair):
    """Two branches after a shared prefix, verified in one forward with a tree mask, give the
    same logits as running each branch on its own (what Medusa's tree verification relies on)."""
    model, _ = pair("llama")
    prefix, br1, br2 = PROMPT[:6], [11, 12], [21, 22]
    P = len(prefix)
    cache = KVCache(model.config, 1, P + 4, "float32")
    run(model, [prefix], [np.arange(P)], build_mask(1, P), cache)
    tree = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], bool)
    got = run(model, [br1 + br2], [[P, P + 1, P, P + 1]], build_mask(1, 4, P, tree=tree), cache)[0]
    for i, br in enumerate((br1, br2)):
        alone = run(model, [prefix + br], [np.arange(P + 2)], build_mask(1, P + 2))[0, P:]
        np.testing.assert_allclose(got[2 * i:2 * i + 2], alone, atol=1e-5)


def test_kv_cache_compaction_keeps_exactly_the_chosen_positions(pair):
    model, _ = pair("qwen3")
    cfg = model.config
    cache = KVCache(cfg, 1, 16, "float32")
    run(model, [PROMPT], [np.arange(len(PROMPT))], build_mask(1, len(PROMPT)), cache)
    before_k = [k.numpy().copy() for k in cache.keys]
    before_v = [v.numpy().copy() for v in cache.values]
    keep = [5, 7, 8]
    cache.compact(4, keep)
    assert cache.length == 4 + len(keep)
    for layer in range(cfg.num_hidden_layers):
        k, v = cache.keys[layer].numpy(), cache.values[layer].numpy()
        np.testing.assert_array_equal(k[:, :, :4], before_k[layer][:, :, :4])
        np.testing.assert_array_equal(k[:, :, 4:7], before_k[layer][:, :, keep])
        np.testing.assert_array_equal(v[:, :, 4:7], before_v[layer][:, :, keep])
    with pytest.raises(ValueError, match="outside"):
        cache.compact(4, [3])


def test_compacted_cache_continues_like_the_kept_sequence(pair):
    """Verify two branches as a tree, keep the second: decoding then continues exactly as if
    only prefix + that branch had ever been fed."""
    model, _ = pair("llama")
    prefix, junk, kept = PROMPT[:5], [30, 31], [40, 41]
    P = len(prefix)
    cache = KVCache(model.config, 1, 16, "float32")
    run(model, [prefix], [np.arange(P)], build_mask(1, P), cache)
    tree = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], bool)
    run(model, [junk + kept], [[P, P + 1, P, P + 1]], build_mask(1, 4, P, tree=tree), cache)
    cache.compact(P, [P + 2, P + 3])
    nxt = run(model, [[7]], [[P + 2]], None, cache)[0, 0]
    ref = run(model, [prefix + kept + [7]], [np.arange(P + 3)], build_mask(1, P + 3))[0, -1]
    np.testing.assert_allclose(nxt, ref, atol=1e-5)


def test_prompt_longer_than_cache_is_a_clear_error(pair):
    model, _ = pair("llama")
    cache = KVCache(model.config, 1, 4, "float32")
    with pytest.raises(ValueError, match=r"KV cache overflow: 0 cached \+ 10 new tokens > max_len 4"):
        run(model, [PROMPT], [np.arange(len(PROMPT))], build_mask(1, len(PROMPT)), cache)
    with pytest.raises(ValueError, match="KV cache overflow"):
        generate(model, PROMPT, 8, max_len=12)


@pytest.mark.slow
@pytest.mark.e2e
def test_smollm2_matches_transformers(smollm2_pkl):
    """The real embedded default: logits and greedy ids against transformers reading the same GGUF."""
    import transformers

    gguf = weights.default_gguf_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = weights.load_tokenizer(smollm2_pkl)
    model = weights.load_model(smollm2_pkl, "float32")
    for prompt in ["The capital of France is", "def fibonacci(n):"]:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            expected = ref(torch.tensor([ids])).logits[0].numpy()
        got = run(model, [ids], [np.arange(len(ids))], build_mask(1, len(ids)))[0]
        np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)
        assert generate(model, ids, 16).output_ids == support.reference_greedy(ref, ids, 16)


@pytest.mark.parametrize("family", support.FAMILIES)
def test_fused_projections_compute_the_same_model(tiny_pkl, family):
    """model.fuse_projections (the GPU's layout: q/k/v and gate/up as one weight each, split +
    RoPE and attention over the cache's whole buffers) through the kernels' Jittor references
    on the CPU: the same logits with a cache, without one (training's hidden states) and with a
    tree mask, and the same Medusa output. Qwen3 keeps separate q/k/v (its q/k norm)."""
    from support import random_heads

    from medusa.decoding.core import forced_logits, hidden_states
    from medusa.decoding.loop import medusa_generate

    plain = weights.load_model(tiny_pkl(family), "float32")
    fused = weights.load_model(tiny_pkl(family), "float32").fuse_projections()
    attn = fused.model.layers[0].self_attn
    assert fused.fused and fused.model.layers[0].mlp.gate_proj is None
    assert (attn.q_proj is not None) == (family == "qwen3")
    assert not any(".q_proj." in n or ".gate_proj." in n for n, _ in fused.named_parameters() if family != "qwen3")
    prompt = [5, 9, 13, 22, 40, 41, 7]
    tokens = generate(plain, prompt, 12).output_ids
    np.testing.assert_allclose(forced_logits(fused, prompt, tokens), forced_logits(plain, prompt, tokens),
                               rtol=1e-5, atol=1e-5)
    ids = np.array([prompt + tokens[:5], prompt[:3] + tokens[:9]])
    mask = np.ones_like(ids)
    mask[1, -2:] = 0
    np.testing.assert_allclose(hidden_states(fused, ids, mask).numpy(), hidden_states(plain, ids, mask).numpy(),
                               rtol=1e-5, atol=1e-5)
    heads = random_heads(plain, "medusa", share=True)
    want = medusa_generate(plain, heads, prompt, 16, "8_node").output_ids
    assert medusa_generate(fused, heads, prompt, 16, "8_node").output_ids == want == generate(plain, prompt, 16).output_ids


@pytest.mark.parametrize("family", support.FAMILIES)
@pytest.mark.parametrize("fuse", [False, True])
def test_pending_residual_form_computes_the_same_layers(tiny_pkl, family, fuse):
    """The GPU's form of the layer loop (DecoderLayer.execute_pending: each residual add inside
    the norm after it, the last in the final norm), run here through the kernels' references:
    the same final-normed states as the plain loop for a prompt and then one cached token, with
    the keys and values in both caches equal."""
    from medusa.decoding.core import new_cache
    from medusa.model.transformer import Rope

    model = weights.load_model(tiny_pkl(family), "float32")
    if fuse:
        model.fuse_projections()
    caches = new_cache(model, 1, 32), new_cache(model, 1, 32)

    def plain(x, rope, mask, cache):
        for i, layer in enumerate(model.model.layers):
            x = layer(x, rope, mask, cache, i)
        return model.model.norm(x)

    start = 0
    for tokens in ([5, 9, 13, 22, 40, 41, 7], [11]):
        T = len(tokens)
        ids = jt.array(np.array([tokens], np.int32))
        rope = Rope(model, jt.array(np.arange(start, start + T, dtype=np.int32)[None]))
        mask = build_mask(1, T, start) if T > 1 else None
        got, want = (run(model.embed(ids), rope, mask, cache)
                     for run, cache in ((model._layers_fused_norms, caches[0]), (plain, caches[1])))
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
        for cache in caches:
            cache.advance(T)
        start += T
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        np.testing.assert_allclose(a.numpy()[:, :, :start], b.numpy()[:, :, :start], rtol=1e-5, atol=1e-5)
