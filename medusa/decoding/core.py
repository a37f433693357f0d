"""The generation core: every way this project runs the base model goes through these functions.

    check_request(config, prompt_len, max_new_tokens)   # the edge cases, decided once (raises)
    cache = new_cache(model, batch, max_len)
    hidden = forward(model, tokens, positions, mask, cache)      # the one model call [B, T, H]
    hidden = prefill(model, cache, prompt_ids)                  # [1, T, H], prompt into the cache
    hidden = decode_one(model, cache, token)                    # [1, 1, H], one token after it
    for token, seconds in stream_tokens(model, prompt_ids, n, eos_ids, sampling): ...
    generate(...)  greedy_batch(...)  forced_logits(...)  hidden_states(...)

Plain decoding (cli/generate.py, the benchmark's base side, tuning), Medusa decoding (steps.py:
its prefill and tree verification), distillation (greedy_batch), the hidden-state cache and the
tuner (hidden_states) and the GPU benchmark all call these; none has a loop of its own.

Edge cases, decided here: an empty prompt and max_new_tokens < 1 are errors; so is a prompt plus
max_new_tokens beyond the model's max_position_embeddings (the message names both numbers). EOS:
decoding stops after the first EOS token, which is part of the output (greedy_batch, made for
training data, drops it). Reference: gpt-fast's generate.py (prefill / decode_one_token).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from medusa.decoding.sampling import Sampling, choose_token
from medusa.model.kvcache import KVCache
from medusa.model.transformer import build_mask
from medusa.runtime.backend import jt
from medusa.runtime.errors import UsageError


class GenerationError(UsageError):
    """A request the model cannot serve (empty prompt, nothing to generate, too long)."""


def check_request(config, prompt_len: int, max_new_tokens: int):
    """Raise GenerationError unless 1 <= prompt_len and 1 <= max_new_tokens and their sum fits
    the model's context (config: a ModelConfig)."""
    if prompt_len < 1:
        raise GenerationError("the prompt is empty (0 tokens): give at least one token to continue from")
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens is {max_new_tokens}: ask for at least 1 new token")
    limit = config.max_position_embeddings
    if prompt_len + max_new_tokens > limit:
        raise GenerationError(f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens = "
                              f"{prompt_len + max_new_tokens} exceeds the model's context of {limit} "
                              "positions (max_position_embeddings): shorten the prompt or lower max_new_tokens")
    check_window(config, prompt_len + max_new_tokens, f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens")


def check_window(config, length: int, what: str):
    """Attention here is full attention: a sequence longer than a Mistral-style sliding_window
    would be computed differently from the model, so it is a GenerationError."""
    window = config.sliding_window
    if window is not None and length > window:
        raise GenerationError(f"{what} = {length} positions exceeds the model's sliding_window of {window} "
                              "(config.json); this project computes full attention only, which equals the model's "
                              f"within {window} positions: keep the sequence within {window} tokens")


def check_ids(config, ids, what="the input"):
    """Every token id is in [0, vocab_size): an id outside would index past the embedding
    (GenerationError naming the first bad id)."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        bad = int(ids[(ids < 0) | (ids >= config.vocab_size)][0])
        raise GenerationError(f"{what} holds token id {bad}, outside the model's vocabulary of {config.vocab_size} "
                              "(vocab_size): the ids were made for another model or are corrupt")


def check_tokens(model, ids):
    """Every input token is in the vocabulary (check_ids), and with a sliced embedding
    (medusa/vocab/reduce.py --slice_embedding) in the reduced one: GenerationError naming the
    first one that is not."""
    check_ids(model.config, ids, "the prompt")
    if model.config.embedding_sliced:
        rows = model.vocab.rows(np.asarray(ids).reshape(-1))
        if (rows < 0).any():
            bad = int(np.asarray(ids).reshape(-1)[np.argmax(rows < 0)])
            raise GenerationError(f"token {bad} is outside the reduced vocabulary of this model "
                                  f"({len(model.vocab.kept)} tokens, embedding sliced): use the full model or a "
                                  "vocabulary built with this kind of input")


def ints(array):
    """int32 jt.Var of an array-like (token ids, positions)."""
    return jt.array(np.asarray(array, dtype=np.int32))


def new_cache(model, batch: int, max_len: int) -> KVCache:
    """A KV cache of max_len positions in the model's dtype."""
    return KVCache(model.config, batch, max_len, model.dtype)


def forward(model, tokens, positions, mask=None, cache=None):
    """The one model call: tokens, positions int32 jt [B, T] (or array-likes), additive mask
    [B, 1, T, S] or None -> final-normed hidden [B, T, H]."""
    if not isinstance(tokens, jt.Var):
        tokens = ints(tokens)
    if not isinstance(positions, jt.Var):
        positions = ints(positions)
    return model(tokens, positions, mask, cache)


def prefill(model, cache, prompt_ids):
    """Run a prompt (list of ids) into an empty-or-not cache -> hidden [1, T, H]."""
    T, past = len(prompt_ids), cache.length
    mask = build_mask(1, T, past) if T > 1 else None
    return forward(model, [prompt_ids], [np.arange(past, past + T)], mask, cache)


def decode_one(model, cache, token: int):
    """One new token after everything cached -> hidden [1, 1, H] (it may attend to all of it)."""
    return forward(model, [[token]], [[cache.length]], None, cache)


def last_logits(model, hidden):
    """fp32 logits [V] (jt) of the last position of hidden [1, T, H]."""
    return model.logits(hidden[:, -1:])[0, 0]


# ---------------------------------------------------------------- plain decoding
@dataclass
class GenerationResult:
    output_ids: list
    step_times: list = field(default_factory=list)   # seconds per decode step (prefill excluded)
    prefill_time: float = 0.0

    @property
    def wall_time(self):
        return self.prefill_time + sum(self.step_times)


def stream_tokens(model, prompt_ids, max_new_tokens, eos_ids=(), sampling: Sampling = None, max_len=None):
    """Yield (token, seconds) for each new token; the first token's time includes the prefill.
    Stops after an EOS token (yielded) or max_new_tokens."""
    sampling = sampling or Sampling()
    check_request(model.config, len(prompt_ids), max_new_tokens)
    check_tokens(model, prompt_ids)
    rng = np.random.default_rng(sampling.seed)
    cache = new_cache(model, 1, max_len or len(prompt_ids) + max_new_tokens)
    cache.check_room(len(prompt_ids) + max_new_tokens - 1)
    start = time.perf_counter()
    with jt.no_grad():                           # not around the yield: the caller's code runs there
        hidden = prefill(model, cache, prompt_ids)
    every = sampling.check_every(model)
    if every:
        yield from _checked_greedy(model, cache, hidden, max_new_tokens, eos_ids, every, start)
        return
    for i in range(max_new_tokens):
        with jt.no_grad():
            token = int(model.vocab.tokens(choose_token(last_logits(model, hidden).numpy(), sampling, rng)))
        yield token, time.perf_counter() - start
        if token in eos_ids or i + 1 == max_new_tokens:
            return
        start = time.perf_counter()
        with jt.no_grad():
            hidden = decode_one(model, cache, token)


def first_wrong(model, hidden_rows, tokens):
    """The full-vocabulary check of a reduced model's greedy tokens: tokens[i] was chosen from
    hidden_rows[i] (jt [H] rows, any number in one product) -> (i, the full model's token) at the
    first token the full vocabulary would not have chosen, or None when all are right."""
    full = model.full_argmax(jt.stack(hidden_rows, 0))
    wrong = np.flatnonzero(full != np.asarray(tokens, dtype=np.int64))
    return None if wrong.size == 0 else (int(wrong[0]), int(full[wrong[0]]))


class CheckInterval:
    """Tokens until the next full-vocabulary check: `every` while the checks pass; after a wrong
    token, 1 (where the full model left the vocabulary once it tends to again: a word the
    vocabulary lacks is several tokens), doubling with each check that passes."""

    def __init__(self, every: int):
        self.every = self.now = every

    def update(self, wrong: bool):
        self.now = 1 if wrong else min(self.every, 2 * self.now)


def _checked_greedy(model, cache, hidden, max_new_tokens, eos_ids, every, start):
    """Greedy decoding on a reduced vocabulary that hands out the full model's tokens
    (Sampling.vocab_check): runs of tokens (CheckInterval) are decoded with the reduced head,
    then checked together against the full one; from the first wrong token on, the run is
    dropped (the cache forgets it) and decoding resumes from the full model's token. The first
    token comes from the full head directly. Tokens are yielded once checked, each with an equal
    share of its run's time (dropped work included)."""
    with jt.no_grad():
        token = int(model.full_argmax(hidden[0, -1:])[0])
    yield token, time.perf_counter() - start
    emitted, interval = 1, CheckInterval(every)
    while token not in eos_ids and emitted < max_new_tokens:
        start = time.perf_counter()
        rows, run = [], []
        with jt.no_grad():
            hidden = decode_one(model, cache, token)           # the cache now holds every checked token
            base = cache.length
            while True:
                rows.append(hidden[0, -1])
                run.append(int(model.vocab.tokens(jt.argmax(last_logits(model, hidden), 0)[0].item())))
                if run[-1] in eos_ids or len(run) == min(interval.now, max_new_tokens - emitted):
                    break
                hidden = decode_one(model, cache, run[-1])
            wrong = first_wrong(model, rows, run)
        interval.update(wrong is not None)
        if wrong is not None:
            index, fix = wrong
            run = run[:index] + [fix]
            cache.truncate(base + index)                       # keep the right tokens before it
        seconds = (time.perf_counter() - start) / len(run)
        for token in run:
            yield token, seconds
        emitted += len(run)


def generate(model, prompt_ids, max_new_tokens, eos_ids=(), sampling: Sampling = None, max_len=None):
    """Plain autoregressive decoding to completion -> GenerationResult (EOS included if hit)."""
    result = GenerationResult(output_ids=[])
    for i, (token, seconds) in enumerate(stream_tokens(model, prompt_ids, max_new_tokens, eos_ids, sampling,
                                                       max_len)):
        result.output_ids.append(token)
        if i == 0:
            result.prefill_time = seconds
        else:
            result.step_times.append(seconds)
    return result


def forced_logits(model, prompt_ids, tokens):
    """fp64 logits [len(tokens) + 1, V] (V: the lm_head's rows, model.vocab maps them to ids): after the prompt, then after each of `tokens` fed one by
    one through the KV cache (teacher forcing: a reference's tokens, so one tie cannot derail it)."""
    check_request(model.config, len(prompt_ids), len(tokens) + 1)
    cache = new_cache(model, 1, len(prompt_ids) + len(tokens) + 1)
    with jt.no_grad():
        rows = [last_logits(model, prefill(model, cache, prompt_ids)).numpy()]
        for token in tokens:
            rows.append(last_logits(model, decode_one(model, cache, int(token))).numpy())
    return np.stack(rows).astype(np.float64)


# ---------------------------------------------------------------- batches
def left_pad(prompts, pad_id):
    """[B] lists of ids -> (tokens [B, P], positions [B, P], padding [B, P]) int32 arrays,
    left-padded; positions count from each sample's first real token (pads get 0)."""
    P = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    padding = np.zeros((len(prompts), P), np.int32)
    for b, p in enumerate(prompts):
        tokens[b, P - len(p):] = p
        padding[b, P - len(p):] = 1
    positions = np.maximum(np.cumsum(padding, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, padding


def greedy_batch(model, prompts, max_new_tokens, eos_ids, pad_id=0, temperature=0.0):
    """Continuations of several prompts (lists of ids) -> [B] lists of new ids, each without its
    EOS: greedy, or sampled at `temperature` > 0 (seed with jt.set_global_seed). Every row
    computes what it would alone: left padding, its own positions and a padding mask. Stops when
    every row has met an EOS or max_new_tokens.

    Sampling is Gumbel-max on the device: argmax(logits / T + g), g = -log(-log(u)), u ~ U(0, 1),
    draws exactly from softmax(logits / T) and fetches only B ids per step, like greedy."""
    if temperature < 0:
        raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    for p in prompts:
        check_request(model.config, len(p), max_new_tokens)
        check_tokens(model, p)
    tokens, positions, padding = left_pad(prompts, pad_id)
    B, P = tokens.shape
    cache = new_cache(model, B, P + max_new_tokens)
    keys = np.concatenate([padding, np.ones((B, max_new_tokens), np.int32)], axis=1)  # [B, S] 1 = real
    next_pos = positions[:, -1] + 1                                                       # [B]
    out, done = [[] for _ in range(B)], np.zeros(B, bool)
    with jt.no_grad():
        hidden = forward(model, tokens, positions, build_mask(B, P, 0, padding), cache)
        for step in range(max_new_tokens):
            logits = model.logits(hidden[:, -1:])[:, 0].float32()                          # [B, V]
            if temperature > 0:
                u = jt.rand(logits.shape, "float32").clamp(1e-20, 1.0 - 1e-7)
                logits = logits / temperature - (-u.log()).log()
            nxt = model.vocab.tokens(logits.argmax(-1)[0].numpy().reshape(B))
            for b in np.flatnonzero(~done):
                if int(nxt[b]) in eos_ids:
                    done[b] = True
                else:
                    out[b].append(int(nxt[b]))
            if done.all() or step + 1 == max_new_tokens:
                break
            mask = build_mask(B, 1, cache.length, keys[:, :cache.length + 1])
            hidden = forward(model, nxt[:, None], (next_pos + step)[:, None], mask, cache)
    return out


def hidden_states(model, input_ids, attention_mask=None):
    """Final-normed hidden states [B, T, H] of right-padded (or unpadded) ids [B, T] without a
    cache and without gradient; attention_mask [B, T] (1 = real token) hides padded keys."""
    ids = np.asarray(input_ids)
    B, T = ids.shape
    check_window(model.config, T, f"a sequence of {T} tokens")
    check_ids(model.config, ids, "the sequence")
    positions = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
    with jt.no_grad():
        hidden = forward(model, ids, positions, build_mask(B, T, 0, attention_mask))
    return hidden.stop_grad()
