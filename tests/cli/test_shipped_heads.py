"""The heads the package ships (medusa/trained/smollm2_{medusa,rnn,moe}.jtr) decode the embedded
SmolLM2 on the CPU with the tree `--medusa_choices auto` picks for them: the output is plain
greedy's, and drafts are accepted (mean accept length > 1.5), on held-out bench prompts."""
import json

import numpy as np
import pytest

from medusa.decoding import core
from medusa.decoding.loop import medusa_generate
from medusa.decoding.tree import resolve_auto
from medusa.heads.io import load_heads
from medusa.model import weights
from medusa.model.tokenizer import ChatTokenizer
from medusa.runtime.files import PACKAGE_DIR

N_NEW = 32
PROMPTS = PACKAGE_DIR / "prompts" / "bench_prompts.jsonl"


@pytest.fixture(scope="module")
def smollm2(smollm2_pkl):
    model = weights.load_model(smollm2_pkl, "float32")
    tok = ChatTokenizer.from_folder(weights.tokenizer_folder(smollm2_pkl))
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()[:2]]
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    return model, [(i, core.generate(model, i, N_NEW).output_ids) for i in ids]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("family", ["medusa", "rnn", "moe"])
def test_shipped_heads_decode_smollm2_losslessly_and_accept_drafts(smollm2, family):
    model, cases = smollm2
    path = PACKAGE_DIR / "trained" / f"smollm2_{family}.jtr"
    heads, tree = load_heads(path), resolve_auto(path, "cpu")
    assert tree.endswith(f"smollm2_{family}_tree_cpu.json")        # the tuned tree, not the fallback
    accepts = []
    for ids, plain in cases:
        out = medusa_generate(model, heads, ids, N_NEW, tree)
        assert out.output_ids == plain
        accepts += out.accept_lengths
    assert np.mean(accepts) > 1.5, accepts
