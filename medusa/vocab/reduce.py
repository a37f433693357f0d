"""Vocabulary reduction of the base model: keep the lm_head rows of the tokens a domain uses.

The command is `medusa vocab build|slice|draft` (cli/vocab.py). `draft` is the other kind: it
leaves the base model whole and only narrows what the heads may propose (heads/draft_vocab.py).

A decode step streams the whole lm_head ([V, H]: 21% of SmolLM2-135M's weights) although a
structured-output domain uses a few hundred tokens. `build` counts the tokens of chat data
rendered with the model's chat template (prompts and replies) and keeps the most frequent ones
until they cover `--coverage` of all tokens (or the `--size` most frequent), always with the
special, template and EOS tokens. `slice` writes a base model whose lm_head holds only those
rows (a tied model gets its own sliced lm_head); the embedding stays whole unless
`--slice_embedding` (then an input token outside the vocabulary is an error naming it). The
config records the kept ids, so `weights.load_model` loads it like any model and every decoder
hands out original token ids (model/transformer.py's VocabMap): the tokenizer and chat template are unchanged.

Reference: vocabulary pruning of a domain-tuned Qwen3 (151,396 -> 432 tokens: kept_indices /
orig2draft), EAGLE-3's draft vocabulary (d2t / t2d maps) and FR-Spec (frequency-ranked subset).
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from medusa.data.samples import chat_prompt_ids, load_samples, load_token_samples
from medusa.model import weights
from medusa.model.config import REDUCED_VOCAB_KEY, ModelConfig
from medusa.runtime.errors import UsageError

VOCAB_FILE = "vocab.json"


# ---------------------------------------------------------------- build
def count_tokens(path, tokenizer, max_length=4096):
    """(Counter of all token ids, Counter of reply ids, LoadReport) of one chat data file."""
    samples, report = load_samples(path, tokenizer, max_length)
    every, replies = Counter(), Counter()
    for s in samples:
        every.update(s.input_ids.tolist())
        replies.update(s.input_ids[s.loss_mask == 1].tolist())
    return every, replies, report


def always_kept(tokenizer, eos_ids):
    """Special tokens, EOS ids and the tokens the chat template writes around any message."""
    ids = set(tokenizer.all_special_ids) | set(int(e) for e in eos_ids)
    scaffold = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}, {"role": "user", "content": ""}]
    ids |= set(chat_prompt_ids(tokenizer, scaffold))
    return ids


def choose(counts: Counter, keep: set, coverage=None, size=None):
    """Kept ids (ascending): `keep`, then the most frequent until `coverage` of the counted
    tokens is covered or `size` ids are kept."""
    kept = set(keep)
    total = sum(counts.values())
    covered = sum(counts[t] for t in kept)
    for token, n in counts.most_common():
        if token in kept:
            continue
        if size is not None and len(kept) >= size:
            break
        if size is None and covered >= coverage * total:
            break
        kept.add(token)
        covered += n
    return sorted(kept)


def coverage_of(counts: Counter, kept) -> float:
    kept = set(kept)
    total = sum(counts.values())
    return sum(n for t, n in counts.items() if t in kept) / max(total, 1)


def build(data_files, tokenizer, eos_ids, vocab_size, coverage=0.9995, size=None) -> dict:
    """The vocab.json dict for `data_files` (see the module docstring)."""
    per_file, every = {}, Counter()
    for path in data_files:
        counts, replies, report = count_tokens(path, tokenizer)
        per_file[str(path)] = (counts, replies, report.kept)
        every.update(counts)
    keep = always_kept(tokenizer, eos_ids)
    kept = choose(every, keep, coverage=None if size else coverage, size=size)
    return {"kept_ids": kept, "size": len(kept), "original_vocab_size": int(vocab_size),
            "orig2reduced": {str(t): i for i, t in enumerate(kept)},
            "target": {"size": size} if size else {"coverage": coverage}, "always_kept": len(keep),
            "coverage": {path: {"all_tokens": coverage_of(c, kept), "reply_tokens": coverage_of(r, kept),
                                "records": n}
                         for path, (c, r, n) in per_file.items()}}


def read_vocab(folder) -> dict:
    path = Path(folder) / VOCAB_FILE if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise UsageError(f"--vocab {folder}: no {VOCAB_FILE} (make one with python -m medusa vocab build)")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable {VOCAB_FILE} ({type(e).__name__}: {e}): make it again with "
                         "python -m medusa vocab build") from None
    if not isinstance(vocab, dict) or not isinstance(vocab.get("kept_ids"), list) or not vocab["kept_ids"]:
        raise UsageError(f"{path}: no kept_ids")
    return vocab


# ---------------------------------------------------------------- slice
def slice_tensors(config: dict, tensors: dict, kept, slice_embedding=False) -> dict:
    """HF tensors of a model with only the `kept` lm_head rows (and embedding rows, if asked)."""
    kept = np.asarray(kept, dtype=np.int64)
    embed = tensors["model.embed_tokens.weight"]
    head = embed if config.get("tie_word_embeddings") else tensors["lm_head.weight"]
    out = dict(tensors)
    out["lm_head.weight"] = np.ascontiguousarray(head[kept])
    if slice_embedding:
        out["model.embed_tokens.weight"] = np.ascontiguousarray(embed[kept])
    return out


def sliced_config(config: dict, vocab: dict, slice_embedding: bool, vocab_path) -> dict:
    if vocab["original_vocab_size"] != config["vocab_size"]:
        raise UsageError(f"{vocab_path}: built for a vocabulary of {vocab['original_vocab_size']} tokens, "
                         f"the model has {config['vocab_size']}")
    if config.get(REDUCED_VOCAB_KEY):
        raise UsageError("the model is reduced already: slice the full model")
    return {**config, "tie_word_embeddings": False,   # the sliced lm_head is a matrix of its own
            REDUCED_VOCAB_KEY: {"kept_ids": vocab["kept_ids"], "embedding_sliced": bool(slice_embedding),
                                # a tied model's whole embedding is its full lm_head: greedy decoding
                                # checks its tokens against it (Sampling.vocab_check)
                                "embedding_is_full_head": bool(config.get("tie_word_embeddings"))
                                and not slice_embedding,
                                "original_vocab_size": config["vocab_size"], "vocab": str(vocab_path)}}


def slice_model(src, vocab_dir, output, slice_embedding=False):
    """Write the reduced model unit `output` (weights + config.json + tokenizer) from `src`."""
    vocab = read_vocab(vocab_dir)
    config, tensors = weights.read_checkpoint(src)
    cfg = ModelConfig.from_dict(config)
    tensors = weights.check_tensors(cfg, tensors, src)
    new_config = sliced_config(config, vocab, slice_embedding, vocab_dir)
    sliced = weights.check_tensors(ModelConfig.from_dict(new_config),
                                   slice_tensors(config, tensors, vocab["kept_ids"], slice_embedding), output)
    dtype = str(next(iter(tensors.values())).dtype)
    return weights.write_unit(output, new_config, sliced, dtype if dtype in ("float16", "float32") else "float16",
                              tokenizer_src=src)


def weight_bytes(cfg, dtype_bytes=4) -> dict:
    """Bytes of weights one decode step streams: everything but the embedding table, of which a
    step reads one row per token."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    layers = n * (h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h)
    head = cfg.output_size * h
    return {"layers": layers * dtype_bytes, "lm_head": head * dtype_bytes,
            "per_step": (layers + head + h) * dtype_bytes}


def draft_counts(path):
    """Counter of the reply tokens (loss-masked) of a token-samples .npz (scripts/distill_ids.py)."""
    samples = load_token_samples(path).samples
    replies = np.concatenate([s.input_ids[s.loss_mask == 1] for s in samples])
    return Counter({int(t): int(n) for t, n in enumerate(np.bincount(replies)) if n})
