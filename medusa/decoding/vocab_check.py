"""The full-vocabulary check as a strategy of the Medusa loop (Sampling.vocab_check): greedy on
a reduced vocabulary that holds the full head hands out the full model's tokens.

The loop calls a check at two fixed points: `first_token` after the prefill and `review` after
every step (which returns the steps that may go out, and a correction). NoCheck passes
everything through. VocabCheck holds steps back until they hold core.CheckInterval's tokens (or
the end), then checks all their tokens in one product with the full head (core.first_wrong). At
the first wrong token its step keeps the tokens before it plus the full model's token, the
cache forgets everything after those, later steps are dropped (handed out with no tokens: their
time was spent), and decoding resumes from the corrected token, the heads drafting from the
state that chose it. Plain decoding's side of the same check is core._checked_greedy.
"""
from medusa.decoding import core
from medusa.runtime.errors import UsageError


class NoCheck:
    """No vocabulary check: the reduced (or full) model's own tokens, every step out at once."""
    active = False

    def first_token(self, root, prompt_hidden):
        return root

    def review(self, step, done, cache, laps):
        return [step], None


class VocabCheck:
    """Checks held steps against the full head every CheckInterval tokens (module docstring)."""
    active = True                    # the stepper keeps each token's state (Step.rows)

    def __init__(self, model, every):
        self.model, self.interval, self.pending = model, core.CheckInterval(every), []

    def first_token(self, root, prompt_hidden):
        """The first token straight from the full head (prompt_hidden [1, P, H])."""
        return int(self.model.full_argmax(prompt_hidden[0, -1:])[0])

    def review(self, step, done, cache, laps):
        """Hold `step` back; when due, check every held step -> (the steps to hand out, fixed in
        place; None when right, else (the full model's token, the state that chose it [1, 1, H],
        tokens dropped)). The check's time counts as "posterior"."""
        self.pending.append(step)
        if not (done or sum(len(p.new) for p in self.pending) >= self.interval.now):
            return [], None
        ready, self.pending = self.pending, []
        fix = self._correct(ready, cache)
        laps("posterior")
        return ready, fix

    def _correct(self, pending, cache):
        wrong = core.first_wrong(self.model, [r for p in pending for r in p.rows],
                                 [t for p in pending for t in p.new])
        self.interval.update(wrong is not None)
        if wrong is None:
            return None
        index, token = wrong
        for i, step in enumerate(pending):                 # the step holding the wrong token
            if index < len(step.new):
                break
            index -= len(step.new)
        dropped = sum(len(q.new) for q in pending[i:]) - index - 1
        step.new = step.new[:index] + [token]
        for q in pending[i + 1:]:
            q.new = []
        cache.truncate(step.cache_start + len(step.new))   # its root and the right tokens after it
        return token, step.rows[index].reshape(1, 1, -1), dropped


def vocab_check(model, sampling, prefix_state):
    """The check a call runs: VocabCheck every sampling.check_every(model) tokens, else NoCheck.
    prefix_state: heads.prefix_state() (heads with a prefix layer are refused with the check)."""
    every = sampling.check_every(model)
    if not every:
        return NoCheck()
    if prefix_state is not None:
        raise UsageError("heads with a prefix layer cannot run with the vocabulary check (Sampling.vocab_check): "
                         "its corrections rewind the base cache, not the prefix layer's; run with the check off")
    return VocabCheck(model, every)
