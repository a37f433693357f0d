"""Greedy Medusa == plain greedy once drafts are accepted: every tree preset and head family, on
the host loop and the device loop, with oracle heads right at rank 0, at rank 1, or part of the
time (a mix of ranks, some tokens never proposed). The accept lengths must be exactly the ones
the tree allows: the longest path whose ranks are those of the true next tokens (the full depth
where the oracle is always right at rank 0), so the accepted-path code runs under the check."""
import numpy as np
import pytest
from support import OracleHeads

import medusa.runtime.options as options
from medusa.decoding.core import generate
from medusa.decoding.device_loop import device_loop_ok
from medusa.decoding.loop import medusa_generate
from medusa.decoding.sampling import Sampling
from medusa.decoding.tree import load_choices
from medusa.model import weights

K = 4
N_NEW = 25
PROMPT = [int(t) for t in np.random.default_rng(11).integers(6, 320, 8)]
PRESETS = ("chain", "8_node", "8_node_2", "16_node", "mc_sim_7b_63")
ORACLES = {"rank0": {"rank": 0}, "rank1": {"rank": 1}, "mix": {"rank": (0, 0, 1), "wrong_every": 5}}


@pytest.fixture(scope="module")
def qwen2(tiny_pkl):
    """The tiny Qwen2 model and its greedy continuation of PROMPT (long enough for every head)."""
    model = weights.load_model(tiny_pkl("qwen2"), "float32")
    return model, generate(model, PROMPT, N_NEW + K + 2).output_ids


def expected_accepts(heads, paths, n):
    """The accept lengths these oracle heads give over a tree: each step takes the longest path
    whose ranks are the ranks at which the true tokens are proposed; the last step is cut at n."""
    paths = {tuple(p) for p in paths}
    last, emitted, lengths = len(PROMPT) - 1, 1, []      # last: the index of the state drafted from
    while emitted < n:
        path = ()
        while (rank := heads.rank_of(last + 2 + len(path))) is not None and path + (rank,) in paths:
            path += (rank,)
        lengths.append(min(len(path) + 1, n - emitted))
        emitted += len(path) + 1
        last += len(path) + 1
    return lengths


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("family", ["medusa", "rnn", "moe"])
@pytest.mark.parametrize("preset", PRESETS)
def test_accepted_drafts_are_lossless_on_both_loops(qwen2, preset, family, oracle):
    model, plain = qwen2
    heads = OracleHeads(model, PROMPT + plain, num_heads=K, family=family, **ORACLES[oracle])
    want = expected_accepts(heads, load_choices(preset, K), N_NEW)
    for loop in ("off", "on"):
        with options.override(device_loop=loop):
            assert device_loop_ok(model, heads, Sampling(), None) == (loop == "on")
            out = medusa_generate(model, heads, PROMPT, N_NEW, preset)
        assert out.output_ids == plain[:N_NEW], loop
        assert out.accept_lengths == want, loop
    if oracle == "rank0":           # always right: every step takes the tree's full depth
        assert want[:-1] == [max(len(p) for p in load_choices(preset, K)) + 1] * (len(want) - 1)
    if not (preset == "chain" and oracle == "rank1"):   # a chain has no rank-1 node to accept
        assert max(out.accept_lengths) > 1
