"""GPU-only paths: the model, Medusa decoding and the heads' projection on CUDA.

Run on a CUDA machine by scripts/gpu_check.sh (`pytest -m gpu`); skipped where Jittor has no CUDA.
The reference is the same random model run by Jittor on the CPU in fp32, which the CPU tests hold
to transformers. No torch here: on the GPU image transformers needs numpy 2, Jittor numpy < 2.
"""
import numpy as np
import pytest

from medusa.config import ModelConfig
from medusa.decoding import medusa_generate, topk_indices
from medusa.core import forced_logits, generate
from medusa.heads import HeadConfig, build_heads
from medusa.model import Transformer
from medusa.runtime import gpu_available, jt, use_device
from oracle import OracleHeads, random_heads

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


def build(family, state, dtype):
    model = Transformer(ModelConfig.from_dict(CONFIGS[family]), dtype, 512)
    for name, p in model.named_parameters():
        p.assign(jt.array(state[name]).cast(dtype))
    return model.eval()


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


@pytest.mark.parametrize("family", CONFIGS)
def test_cuda_fp32_matches_cpu(cpu_reference, cuda, family):
    state, tokens, want = cpu_reference[family]
    model = build(family, state, "float32")
    got = forced_logits(model, PROMPT, tokens[:-1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert generate(model, PROMPT, STEPS).output_ids == tokens


@pytest.mark.parametrize("family", CONFIGS)
def test_cuda_fp16_close_to_cpu_fp32(cpu_reference, cuda, family):
    state, tokens, want = cpu_reference[family]
    got = forced_logits(build(family, state, "float16"), PROMPT, tokens[:-1])
    rel = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    assert rel.max() < 2e-2, rel
    clear = margins(want) > 0.1       # fp16 may flip only near-ties
    assert clear.sum() >= len(clear) // 2
    assert (got.argmax(-1) == want.argmax(-1))[clear].all()


@pytest.mark.parametrize("tree", ["8_node", "mc_sim_7b_63"])
@pytest.mark.parametrize("head_family", ["medusa", "rnn"])
def test_medusa_greedy_is_lossless_on_cuda_fp32(cpu_reference, cuda, head_family, tree):
    state, tokens, _ = cpu_reference["llama"]
    model = build("llama", state, "float32")
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
