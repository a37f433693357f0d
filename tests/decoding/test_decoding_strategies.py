"""The pieces of the Medusa loop on their own: the acceptance rules on fixed scores, the
vocabulary check's hold-back and correction with a fake full head, which stepper serves a call,
and the loop driving a scripted stepper (its bookkeeping without heads)."""
from types import SimpleNamespace

import numpy as np
import pytest

import medusa.runtime.options as options
from medusa.decoding import acceptance, loop
from medusa.decoding.device_loop import DeviceStepper
from medusa.decoding.sampling import Sampling
from medusa.decoding.stepper import HostStepper, Step, clip
from medusa.decoding.tree import PRESETS, build_tree_buffers
from medusa.decoding.tree_vars import resolve_tree
from medusa.decoding.vocab_check import NoCheck, VocabCheck, vocab_check
from medusa.model import weights
from medusa.runtime.backend import jt
from medusa.runtime.errors import UsageError

BUF = build_tree_buffers(PRESETS["8_node"])    # leaves 4=[0,1], 7=[1,0,0], 8=[0,0,0,0]


def ok_nodes(*nodes):
    ok = np.zeros(BUF.num_nodes, bool)
    ok[[0, *nodes]] = True
    return ok


# ---------------------------------------------------------------- acceptance rules
def test_best_path_takes_the_longest_run_then_the_score_then_the_first():
    assert acceptance.best_path(BUF, ok_nodes()) == [0]
    assert acceptance.best_path(BUF, ok_nodes(1, 3, 6, 2, 5, 7)) == [0, 2, 5, 7]        # two of length 4: the first
    score = np.zeros(BUF.num_nodes)
    score[[1, 3, 6]] = 1.0
    assert acceptance.best_path(BUF, ok_nodes(1, 3, 6, 2, 5, 7), score) == [0, 1, 3, 6]  # ...or the higher score
    assert acceptance.best_path(BUF, ok_nodes(3, 6, 8)) == [0]                           # a run starts at the root
    assert acceptance.best_path(BUF, ok_nodes(1, 3, 6, 8)) == [0, 1, 3, 6, 8]


def test_greedy_and_typical_acceptance_per_node():
    tokens = np.arange(100, 100 + BUF.num_nodes)
    argmax = np.full(BUF.num_nodes, -1)
    argmax[0], argmax[1] = 101, 103                 # the root predicts node 1, node 1 predicts node 3
    assert np.flatnonzero(acceptance.greedy_ok(BUF, tokens, argmax)).tolist() == [0, 1, 3]
    entropy = np.zeros(BUF.num_nodes)
    logp = np.log(np.full(BUF.num_nodes, 0.5))
    everything = Sampling("typical", temperature=1.0, posterior_threshold=0.0, posterior_alpha=0.0)
    assert acceptance.typical_ok(BUF, logp, entropy, everything).all()
    strict = Sampling("typical", temperature=1.0, posterior_threshold=0.6, posterior_alpha=1.0)
    assert np.flatnonzero(acceptance.typical_ok(BUF, logp, entropy, strict)).tolist() == [0]


def test_clip_stops_after_an_eos_and_at_the_room_left():
    assert clip([1, 2, 3], {2}, 5) == [1, 2] and clip([1, 2, 3], set(), 2) == [1, 2]


# ---------------------------------------------------------------- the vocabulary check
class FullHead:
    """A model whose full head picks the value stored in each state row (rows of width 1)."""
    has_full_head = True

    def full_argmax(self, rows):
        return rows.numpy()[:, 0].astype(np.int64)


class Cache:
    def __init__(self):
        self.truncated = []

    def truncate(self, length):
        self.truncated.append(length)


def step(new, full, cache_start):
    """A held step: tokens `new`, the full head's choice at each of them `full`."""
    rows = [jt.array(np.array([t], np.float32)) for t in full]
    return Step(list(new), {}, cache_start, False, rows)


def test_the_check_holds_steps_back_and_fixes_the_first_wrong_token():
    check, cache, laps = VocabCheck(FullHead(), 4), Cache(), lambda name: None
    a, b, c = step([1, 2], [1, 2], 10), step([3, 4, 5], [3, 9, 5], 13), step([6], [6], 16)
    assert check.review(a, False, cache, laps) == ([], None)                 # 2 tokens held: not due at 4
    ready, fix = check.review(b, False, cache, laps)                         # 5: due, token 4 is wrong
    assert ready == [a, b] and a.new == [1, 2] and b.new == [3, 9]
    token, state, dropped = fix
    assert token == 9 and state.shape == [1, 1, 1] and float(state.numpy().reshape(-1)[0]) == 9 and dropped == 1
    assert cache.truncated == [13 + 2]                                       # b's root and its right token
    assert check.interval.now == 1
    assert check.review(c, False, cache, laps) == ([c], None) and check.interval.now == 2


def test_the_check_drops_the_steps_after_a_wrong_token():
    check, cache, laps = VocabCheck(FullHead(), 32), Cache(), lambda name: None
    a, b = step([1, 2], [1, 7], 0), step([3, 4], [3, 4], 2)
    assert check.review(a, False, cache, laps) == ([], None)
    ready, (token, _, dropped) = check.review(b, True, cache, laps)          # the end: due whatever the count
    assert ready == [a, b] and a.new == [1, 7] and b.new == [] and token == 7 and dropped == 2
    assert cache.truncated == [2]


def test_which_check_a_call_runs():
    reduced = SimpleNamespace(has_full_head=True)
    assert isinstance(vocab_check(reduced, Sampling(vocab_check=8), None), VocabCheck)
    assert isinstance(vocab_check(reduced, Sampling(vocab_check=0), None), NoCheck)
    assert isinstance(vocab_check(reduced, Sampling(temperature=0.7), None), NoCheck)
    assert isinstance(vocab_check(SimpleNamespace(has_full_head=False), Sampling(), None), NoCheck)
    with pytest.raises(UsageError, match="prefix layer cannot run with the vocabulary check"):
        vocab_check(reduced, Sampling(), {"past": []})
    passed = step([1], [2], 0)
    assert NoCheck().review(passed, False, None, None) == ([passed], None) and NoCheck().first_token(5, None) == 5


# ---------------------------------------------------------------- which stepper, and the loop around one
def test_the_stepper_is_chosen_once_from_the_option_and_the_call():
    tree = resolve_tree("8_node", 4)
    model, heads = SimpleNamespace(vocab=SimpleNamespace(reduced=False)), SimpleNamespace()

    def choose(sampling, check=NoCheck()):
        return loop.choose_stepper(model, heads, tree, None, sampling, None, None, check)
    with options.override(device_loop="on"):
        assert isinstance(choose(Sampling()), DeviceStepper)
        assert isinstance(choose(Sampling("sample", temperature=0.7)), HostStepper)
        checked = choose(Sampling(), VocabCheck(FullHead(), 4))
        assert isinstance(checked, HostStepper) and checked.keep_rows
    with options.override(device_loop="off"):
        assert isinstance(choose(Sampling()), HostStepper)


class ScriptedStepper:
    """Emits the given steps' tokens whatever the tree; records what it was asked to draft from."""

    def __init__(self, script):
        self.script, self.drafts = list(script), []

    def draft(self, root, hidden_last, laps=None):
        self.drafts.append(root)

    def step(self, room, eos_ids, laps):
        new = clip(self.script.pop(0), eos_ids, room)
        laps("tree")
        return Step(new, laps.stats, 0, new[-1] in eos_ids or len(new) >= room, hidden_last="state")


@pytest.fixture(scope="module")
def model(tiny_pkl):
    return weights.load_model(tiny_pkl("qwen2"), "float32")


def test_the_loop_drives_any_stepper(model, monkeypatch):
    heads = SimpleNamespace(config=SimpleNamespace(num_heads=4), prefix_state=lambda: None,
                            read_prefix=lambda state, hidden: hidden[:, -1:])
    prompt = [10, 11, 12]
    for n, eos, want in ((9, (), [[20, 21], [22, 23, 24], [25, 26, 27]]),     # cut to the 8 tokens left
                         (40, (23,), [[20, 21], [22, 23]])):                   # stops after the EOS
        stepper = ScriptedStepper([[20, 21], [22, 23, 24], [25, 26, 27, 28], [29]])
        monkeypatch.setattr(loop, "choose_stepper", lambda *args: stepper)
        chunks = list(loop.medusa_stream(model, heads, prompt, n, "8_node", eos))
        first = chunks[0][0][0]
        assert [c for c, _ in chunks] == [[first]] + want
        assert stepper.drafts == [first] + [w[-1] for w in want[:-1]]        # never after the last step
        assert set(chunks[0][1]) == {"init"} and all(set(s) == {"tree"} for _, s in chunks[1:])
