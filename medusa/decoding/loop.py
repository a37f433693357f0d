"""The Medusa loop: draft a tree of candidates with the heads, verify it in one base-model call,
keep the longest accepted path, repeat (Cai et al. 2024; FasterDecoding/Medusa's
medusa_generate in medusa/model/medusa_model.py).

    for new_tokens, seconds in medusa_stream(model, heads, prompt_ids, max_new_tokens, tree): ...
    result = medusa_generate(...)            # MedusaResult: output_ids, accept_lengths, times

One loop serves every way of decoding; what differs is handed to it as objects, chosen once:
the Stepper (stepper.HostStepper: steps.py on the host, every acceptance mode; or
device_loop.DeviceStepper: the greedy step as one graph on the device; or
retrieval.RetrievalStepper: the host step on a tree drafted from the text so far, no heads) and
the vocabulary check
(vocab_check.NoCheck or VocabCheck), which the loop calls after the prefill and after each step.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from medusa.decoding import core
from medusa.decoding.device_loop import DeviceStepper, device_loop_ok
from medusa.decoding.retrieval import MergedStepper, RetrievalStepper
from medusa.decoding.sampling import Sampling
from medusa.decoding.stepper import HostStepper, Laps, Stepper
from medusa.decoding.steps import prefill
from medusa.decoding.tree_vars import resolve_tree
from medusa.decoding.vocab_check import vocab_check
from medusa.runtime.backend import jt

STAT_NAMES = ("init", "medusa", "tree", "posterior", "update")  # wall-time buckets


@dataclass
class MedusaResult:
    output_ids: list                 # new tokens only (EOS included if hit)
    accept_lengths: list = field(default_factory=list)  # tokens added per step (prefill excluded)
    times: dict = field(default_factory=lambda: dict.fromkeys(STAT_NAMES, 0.0))  # seconds

    @property
    def steps(self):
        return len(self.accept_lengths)

    @property
    def wall_time(self):
        return sum(self.times.values())


def choose_stepper(model, heads, tree, cache, sampling, rng, state, check, prompt_ids=()) -> Stepper:
    """The retrieval drafter's stepper for it (its tree changes every step), else the device
    loop where it serves the call (device_loop_ok), else the host loop."""
    if getattr(heads, "retrieval", False):
        return RetrievalStepper(model, heads, cache, sampling, rng, prompt_ids, keep_rows=check.active)
    if getattr(heads, "merged", False):
        return MergedStepper(model, heads.heads, heads.drafter, tree, cache, sampling, rng, prompt_ids, state,
                             keep_rows=check.active)
    if device_loop_ok(model, heads, sampling, check.active):
        return DeviceStepper(model, heads, tree, cache, state)
    return HostStepper(model, heads, tree, cache, sampling, rng, state, keep_rows=check.active)


def medusa_stream(model, heads, prompt_ids, max_new_tokens, choices="8_node", eos_ids=(), sampling=None,
                  max_len=None):
    """Yield (new_token_ids, {bucket: seconds}) for the prefill ("init") and each Medusa step.

    Stops after an EOS token (included) or max_new_tokens. The cache holds max_len positions
    (default: prompt + max_new_tokens + tree nodes). On a reduced vocabulary with the full head
    (Sampling.vocab_check) steps are yielded once checked, a dropped one with no tokens, and the
    check's time counts as "posterior"."""
    sampling = sampling or Sampling()
    # heads draft on the tree `choices`; the retrieval drafter makes its own tree every step
    tree = None if getattr(heads, "retrieval", False) else resolve_tree(choices, heads.config.num_heads)
    nodes = heads.max_tree_nodes if tree is None else tree.num_nodes
    if getattr(heads, "merged", False):
        nodes += heads.drafter.config.max_nodes
    eos_ids, rng = set(eos_ids), np.random.default_rng(sampling.seed)
    core.check_request(model.config, len(prompt_ids), max_new_tokens)
    core.check_tokens(model, prompt_ids)
    # room for the last tree beyond the output: its extra nodes are verified, never emitted
    cache = core.new_cache(model, 1, max_len or len(prompt_ids) + max_new_tokens + nodes)
    start = time.perf_counter()
    state = heads.prefix_state()
    check = vocab_check(model, sampling, state)
    with jt.no_grad():
        prompt_hidden, root = prefill(model, cache, prompt_ids, sampling, rng)
        hidden_last = heads.read_prefix(state, prompt_hidden)
        root = check.first_token(root, prompt_hidden)
    stepper = choose_stepper(model, heads, tree, cache, sampling, rng, state, check, prompt_ids)
    done = root in eos_ids or max_new_tokens == 1
    if not done:
        with jt.no_grad():
            stepper.draft(root, hidden_last)
    yield [root], {"init": time.perf_counter() - start}
    emitted = 1
    while not done:
        laps = Laps()
        with jt.no_grad():                         # not around the yield: the caller's code runs there
            step = stepper.step(max_new_tokens - emitted, eos_ids, laps)
            emitted += len(step.new)
            root, hidden_last, done = step.new[-1], step.hidden_last, step.finished
            ready, fix = check.review(step, done, cache, laps)
            if fix is not None:
                root, hidden_last, dropped = fix
                emitted -= dropped
                done = root in eos_ids or emitted >= max_new_tokens
            if not done:
                stepper.draft(root, hidden_last, laps)
        for out in ready:
            yield out.new, out.stats


def medusa_generate(model, heads, prompt_ids, max_new_tokens, choices="8_node", eos_ids=(), sampling=None,
                    max_len=None) -> MedusaResult:
    """Medusa decoding to completion; see medusa_stream."""
    result = MedusaResult(output_ids=[])
    stream = medusa_stream(model, heads, prompt_ids, max_new_tokens, choices, eos_ids, sampling, max_len)
    for i, (new, stats) in enumerate(stream):
        result.output_ids.extend(new)
        if i > 0:
            result.accept_lengths.append(len(new))
        for name, seconds in stats.items():
            result.times[name] += seconds
    return result
