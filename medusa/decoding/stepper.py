"""How the Medusa loop takes one step, as a strategy object: the Stepper protocol, the Step it
hands back, the clock that books the step's time, and HostStepper, the step taken with the
functions of steps.py (token choice on the host, every acceptance mode and vocabulary).

The loop (loop.py) only calls `draft` (propose the tree after a token) and `step` (verify the
drafted tree, accept, keep the path); which stepper serves a call is chosen once, before the
loop (loop.choose_stepper). The other stepper is device_loop.DeviceStepper (greedy, one fetch a
step). This is the shape of transformers' assisted generation, whose loop is handed a
`CandidateGenerator` (get_candidates / update_candidate_strategy) instead of branching on it.
"""
import time
from dataclasses import dataclass
from typing import Protocol

from medusa.decoding import steps


class Laps:
    """Seconds per wall-time bucket (loop.STAT_NAMES) of one step, booked as its parts end."""

    def __init__(self):
        self.stats, self._clock = {}, time.perf_counter()

    def __call__(self, name):
        now = time.perf_counter()
        self.stats[name], self._clock = self.stats.get(name, 0.0) + now - self._clock, now


@dataclass
class Step:
    """One Medusa step's output, as the loop and the vocabulary check see it."""
    new: list                   # the tokens it emits (cut after an EOS and to the room left)
    stats: dict                 # seconds per bucket (Laps.stats: later parts still add to it)
    cache_start: int            # the cache's length before the step (its root went there)
    finished: bool              # an EOS or the last token asked for: no tree is drafted after it
    rows: list = None           # jt [H] each: the state each token was chosen from (keep_rows only)
    hidden_last: object = None  # what the next tree is drafted from (None: finished, or on the device)


class Stepper(Protocol):
    def draft(self, root: int, hidden_last, laps: Laps = None) -> None:
        """Propose the next tree after token `root`, chosen from state `hidden_last` [1, 1, H]."""

    def step(self, room: int, eos_ids: set, laps: Laps) -> Step:
        """Verify the drafted tree, accept its longest right path and keep it in the cache."""


def clip(new, eos_ids, room):
    """Truncate a step's tokens after the first EOS and to the `room` left."""
    for i, t in enumerate(new):
        if t in eos_ids:
            new = new[:i + 1]
            break
    return new[:room]


class HostStepper:
    """The step as steps.py takes it: tree_decode, evaluate_posterior on the host, update_inputs,
    then the heads read the kept states (heads.read_prefix; state: heads.prefix_state()).

    keep_rows (the vocabulary check): each token's state is kept with the step, and the cache
    keeps the accepted path even after the last step, since a correction may resume from it."""

    def __init__(self, model, heads, tree, cache, sampling, rng, state=None, keep_rows=False):
        self.model, self.heads, self.tree, self.cache = model, heads, tree, cache
        self.sampling, self.rng, self.state, self.keep_rows = sampling, rng, state, keep_rows
        self.tokens = None                                   # [N] the drafted tree's tokens

    def draft(self, root, hidden_last, laps=None):
        self.tokens = steps.propose(self.model, self.heads, self.tree, hidden_last, root)
        if laps is not None:
            laps("medusa")

    def step(self, room, eos_ids, laps):
        model, tree, cache, tokens = self.model, self.tree, self.cache, self.tokens
        cache_start = cache.length
        hidden, scores = steps.tree_decode(model, cache, tree, tokens, self.sampling)
        laps("tree")
        path, bonus = steps.evaluate_posterior(tree, tokens, scores, self.sampling, self.rng)
        new = clip([int(tokens[n]) for n in path[1:]] + [bonus], eos_ids, room)
        rows = [hidden[0, n] for n in path[:len(new)]] if self.keep_rows else None
        out = Step(new, laps.stats, cache_start, new[-1] in eos_ids or len(new) >= room, rows)
        laps("posterior")
        if not out.finished or self.keep_rows:
            kept = steps.update_inputs(cache, tree, path, hidden, self.state is not None)
            out.hidden_last = self.heads.read_prefix(self.state, kept)
            laps("update")
        return out
