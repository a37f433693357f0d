"""The retrieval drafter (decoding/retrieval.py): n-gram lookup over the text so far, the trie it
drafts, lossless greedy decoding with it, and `--draft retrieval` on the command line."""
import numpy as np
import pytest

from medusa.cli import generate as generate_command
from medusa.decoding.core import generate
from medusa.decoding.loop import medusa_generate
from medusa.decoding.retrieval import NgramIndex, RetrievalConfig, RetrievalDrafter, TokenTrie
from medusa.decoding.sampling import Sampling
from medusa.model import weights
from medusa.runtime.errors import UsageError


@pytest.fixture(scope="module")
def model(tiny_pkl):
    return weights.load_model(tiny_pkl("llama"), "float32")


def test_continuations_longest_match_first_then_most_recent():
    index = NgramIndex(1, 3)
    index.extend([5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 4, 6, 3, 5, 6, 7])
    # "5 6 7" occurred at 0 and 5: the most recent first; then "6 7" adds nothing new; "7" neither;
    # depth 3 cuts each continuation
    assert index.continuations(3, 4) == [(1, 2, 4), (8, 9, 5)]
    assert index.continuations(3, 1) == [(1, 2, 4)]
    index.extend([3])                      # "7 3": unseen; "3" once, followed by 5 6 7
    assert index.continuations(4, 4) == [(5, 6, 7, 3)]


def test_truncate_is_the_inverse_of_extend():
    ids = [int(t) for t in np.random.default_rng(0).integers(0, 6, 60)]
    grown = NgramIndex(1, 4)
    grown.extend(ids)
    grown.truncate(35)
    fresh = NgramIndex(1, 4)
    fresh.extend(ids[:35])
    assert grown.ids == fresh.ids and grown.after == fresh.after
    assert grown.continuations(8, 4) == fresh.continuations(8, 4)


def test_trie_merges_shared_prefixes_within_the_node_budget():
    paths, tokens = TokenTrie().add_all([(1, 2, 3), (1, 2, 4), (5,)], 10).paths()
    assert paths == [[0], [0, 0], [0, 0, 0], [0, 0, 1], [1]]
    assert [tokens[tuple(p)] for p in paths] == [1, 2, 3, 4, 5]
    paths, _ = TokenTrie().add_all([(1, 2, 3), (1, 2, 4), (5,)], 3).paths()
    assert paths == [[0], [0, 0], [0, 0, 0]]                   # the first continuation first
    assert TokenTrie().add_all([], 8).paths() == ([], {})
    trie = TokenTrie().add_all([(1, 2)], 8)                    # a budget counts this call's new nodes only
    assert trie.add_all([(1, 2, 3, 4), (5,)], 1).paths()[0] == [[0], [0, 0], [0, 0, 0]]


def test_propose_builds_the_tree_and_node_tokens():
    drafter = RetrievalDrafter(RetrievalConfig(depth=3, branches=2, max_nodes=8))
    index = drafter.index([9, 1, 2, 3, 9, 1, 2, 4, 9])
    tree, tokens = drafter.propose(index)
    buf = tree.buffers
    assert tokens[0] == 9 and tree.num_nodes == len(tokens) == 5
    # each root-to-leaf path spells one continuation after the root
    spelled = {tuple(int(tokens[n]) for n in row[1:] if n >= 0) for row in buf.retrieve_indices}
    assert spelled == {(1, 2, 4), (1, 2, 3)}
    # nothing to retrieve: one node guessing the root repeats
    tree, tokens = drafter.propose(drafter.index([7, 8]))
    assert tree.num_nodes == 2 and list(tokens) == [8, 8]


def test_config_refuses_bad_values():
    for bad in (dict(min_ngram=0), dict(min_ngram=3, max_ngram=2), dict(depth=0), dict(max_nodes=0)):
        with pytest.raises(UsageError):
            RetrievalConfig(**bad)


@pytest.mark.parametrize("nodes", [1, 6, 24])
def test_greedy_with_retrieval_is_plain_greedy_and_accepts_drafts(model, nodes):
    """The tiny model soon repeats itself: retrieval finds that in its own reply, drafts are
    accepted (the accepted-path code runs, several tokens a step), and the output is plain
    greedy's token for token."""
    pattern = [11, 12, 13, 14, 15, 16, 17, 18]
    prompt = pattern * 4 + pattern[:3]
    want = generate(model, prompt, 40).output_ids
    out = medusa_generate(model, RetrievalDrafter(RetrievalConfig(max_nodes=nodes)), prompt, 40)
    assert out.output_ids == want
    assert sum(out.accept_lengths) + 1 == len(want)
    assert max(out.accept_lengths) >= (2 if nodes == 1 else 4)


@pytest.mark.parametrize("mode", ["sample", "typical"])
def test_sampling_with_retrieval_runs_and_is_reproducible(model, mode):
    prompt = [11, 12, 13, 14] * 5
    sampling = Sampling(mode, temperature=0.8, seed=3)
    runs = [medusa_generate(model, RetrievalDrafter(), prompt, 24, sampling=sampling).output_ids for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 24


def test_command_line_draft_retrieval(tiny_pkl, capsys):
    assert generate_command.main(["--jittor_base_weights", str(tiny_pkl("llama")), "--device", "cpu",
                                  "--draft", "retrieval", "--prompt", "one two three one two three one two",
                                  "--max_new_tokens", "8", "--json"]) in (None, 0)
    assert '"accept_lengths"' in capsys.readouterr().out
    with pytest.raises(UsageError, match="--draft retrieval drafts without heads"):
        generate_command.main(["--jittor_base_weights", str(tiny_pkl("llama")), "--draft", "retrieval",
                               "--medusa_weights", str(tiny_pkl("llama")), "--prompt", "x"])


@pytest.mark.parametrize("head_family", ["medusa", "rnn"])
@pytest.mark.parametrize("preset", ["chain", "8_node"])
def test_heads_and_retrieval_merged_are_plain_greedy(model, head_family, preset):
    """--draft heads+retrieval: the heads' tree with the continuations merged into it; greedy is
    plain greedy, and more is accepted than with the heads alone (random heads accept little)."""
    from support import random_heads

    from medusa.decoding.retrieval import MergedDraft

    pattern = [11, 12, 13, 14, 15, 16, 17, 18]
    prompt = pattern * 4 + pattern[:3]
    heads = random_heads(model, head_family)
    want = generate(model, prompt, 40).output_ids
    alone = medusa_generate(model, heads, prompt, 40, preset)
    both = medusa_generate(model, MergedDraft(heads, RetrievalDrafter()), prompt, 40, preset)
    assert alone.output_ids == both.output_ids == want
    assert max(both.accept_lengths) >= 4 and len(both.accept_lengths) < len(alone.accept_lengths)
