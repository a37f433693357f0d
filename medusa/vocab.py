"""Vocabulary reduction of the base model: keep the lm_head rows of the tokens a domain uses.

    python -m medusa.vocab build --data train.jsonl [more.jsonl ...] --output vocab_dir [--coverage 0.9995 | --size N]
    python -m medusa.vocab slice --jittor_base_weights model.pkl --vocab vocab_dir --output small/model.pkl [--slice_embedding]
    python -m medusa.vocab draft --data samples.npz --size 8192 --output heads_dir/draft_vocab.json

`draft` is the other kind: it leaves the base model whole and only narrows what the heads may
propose (DraftVocab, --draft_vocab), which stays lossless on any text.

A decode step streams the whole lm_head ([V, H]: 21% of SmolLM2-135M's weights) although a
structured-output domain uses a few hundred tokens. `build` counts the tokens of chat data
rendered with the model's chat template (prompts and replies) and keeps the most frequent ones
until they cover `--coverage` of all tokens (or the `--size` most frequent), always with the
special, template and EOS tokens. `slice` writes a base model whose lm_head holds only those
rows (a tied model gets its own sliced lm_head); the embedding stays whole unless
`--slice_embedding` (then an input token outside the vocabulary is an error naming it). The
config records the kept ids, so `weights.load_model` loads it like any model and every decoder
hands out original token ids (model.VocabMap): the tokenizer and chat template are unchanged.

Reference: the users' experiment report (151,396 -> 432 tokens for Qwen3: kept_indices /
orig2draft), EAGLE-3's draft vocabulary (d2t / t2d maps) and FR-Spec (frequency-ranked subset).
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from medusa.errors import UsageError
from medusa.files import atomic_write

VOCAB_FILE = "vocab.json"


# ---------------------------------------------------------------- build
def count_tokens(path, tokenizer, max_length=4096):
    """(Counter of all token ids, Counter of reply ids, LoadReport) of one chat data file."""
    from medusa.data import load_samples

    samples, report = load_samples(path, tokenizer, max_length)
    every, replies = Counter(), Counter()
    for s in samples:
        every.update(s.input_ids.tolist())
        replies.update(s.input_ids[s.loss_mask == 1].tolist())
    return every, replies, report


def always_kept(tokenizer, eos_ids):
    """Special tokens, EOS ids and the tokens the chat template writes around any message."""
    from medusa.data import chat_prompt_ids

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
        raise UsageError(f"--vocab {folder}: no {VOCAB_FILE} (make one with python -m medusa.vocab build)")
    vocab = json.loads(path.read_text())
    if not isinstance(vocab.get("kept_ids"), list) or not vocab["kept_ids"]:
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
    from medusa.config import REDUCED_VOCAB_KEY

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
    from medusa import weights
    from medusa.config import ModelConfig

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


# ---------------------------------------------------------------- draft vocabulary (heads only)
DRAFT_KEY = "token_ids"
DRAFT_FILE = "draft_vocab.json"   # beside heads: what --draft_vocab auto takes on a CPU


class DraftVocab:
    """The token ids the heads may propose. Their shared projection then reads only these
    columns of the base lm_head ([H, n] instead of [H, V]: on the CPU the heads' projection
    streams 113 MB a pass for SmolLM2, and rnn heads make one pass per tree depth). FR-Spec's
    frequency-ranked draft subset; EAGLE-3's d2t map. Lossless: the base model still verifies
    every drafted token, and a token outside the set is only never drafted. The base model's
    own vocabulary (reduced or not) is untouched."""

    def __init__(self, token_ids, source="draft vocabulary"):
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or not len(ids) or ids.dtype.kind not in "iu" or ids.min() < 0:
            raise UsageError(f"{source}: {DRAFT_KEY} must be a non-empty list of token ids >= 0")
        self.token_ids = np.unique(ids.astype(np.int64))        # ascending
        self.source = str(source)
        self.path = None                                         # the file it came from (load)
        self._model = self._weight = self._rows = None

    def __len__(self):
        return len(self.token_ids)

    @classmethod
    def load(cls, path):
        """A JSON file {"token_ids": [...], ...} (`python -m medusa.vocab draft`)."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"--draft_vocab {path}: no such file")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"--draft_vocab {path}: not JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get(DRAFT_KEY), list):
            raise UsageError(f"--draft_vocab {path}: needs an object with a {DRAFT_KEY!r} list "
                             "(python -m medusa.vocab draft writes one)")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in data[DRAFT_KEY]):
            raise UsageError(f"--draft_vocab {path}: {DRAFT_KEY} must hold integers only")
        draft = cls(data[DRAFT_KEY], source=f"--draft_vocab {path}")
        draft.path = path
        return draft

    def check(self, vocab_size):
        """Every id inside a vocabulary of `vocab_size` (before the model loads)."""
        if self.token_ids[-1] >= vocab_size:
            raise UsageError(f"{self.source}: token id {int(self.token_ids[-1])} is outside the model's "
                             f"vocabulary of {vocab_size}: was it made for another tokenizer?")

    def projection(self, model):
        """(the lm_head columns [H, n] of these tokens, their logit rows [n]) for `model`, made once."""
        from medusa.runtime import jt

        if self._model is not model:
            self.check(model.config.vocab_size)
            rows = model.vocab.rows(self.token_ids)
            if (rows < 0).any():
                raise UsageError(f"{self.source}: token {int(self.token_ids[rows < 0][0])} is outside the "
                                 "model's reduced vocabulary")
            self._weight = jt.array(model.lm_head_t().numpy()[:, rows])
            self._model, self._rows = model, rows
        return self._weight, self._rows


def draft_counts(path):
    """Counter of the reply tokens (loss-masked) of a token-samples .npz (scripts/distill_ids.py)."""
    from medusa.data import load_token_samples

    samples = load_token_samples(path).samples
    replies = np.concatenate([s.input_ids[s.loss_mask == 1] for s in samples])
    return Counter({int(t): int(n) for t, n in enumerate(np.bincount(replies)) if n})


def run_draft(args):
    if args.size < 1:
        raise UsageError(f"--size must be >= 1, got {args.size}")
    out = Path(args.output)
    if out.exists():
        raise UsageError(f"--output {out} exists: choose another name (nothing is overwritten)")
    counts = Counter()
    for f in args.data:
        if not Path(f).is_file():
            raise UsageError(f"--data {f}: no such file")
        if not f.endswith(".npz"):
            raise UsageError(f"--data {f}: give token samples (.npz, scripts/distill_ids.py samples)")
        counts.update(draft_counts(f))
    kept = sorted(t for t, _ in counts.most_common(args.size))
    total = sum(counts.values())
    covered = sum(counts[t] for t in kept)
    atomic_write(out, json.dumps({DRAFT_KEY: kept, "size": len(kept), "reply_tokens": total,
                                  "coverage": covered / total, "data": [str(f) for f in args.data]}) + "\n")
    print(f"{out}: {len(kept)} token ids, {covered / total:.4f} of {total:,} reply tokens")


# ---------------------------------------------------------------- command line
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="count tokens of chat data, write vocab.json")
    b.add_argument("--data", nargs="+", required=True, help="ShareGPT / messages JSON(L) files")
    b.add_argument("--output", required=True, help="folder for vocab.json")
    b.add_argument("--base_model_path", default="", help="the model whose tokenizer counts (default: embedded SmolLM2)")
    b.add_argument("--jittor_base_weights", default="")
    group = b.add_mutually_exclusive_group()
    group.add_argument("--coverage", type=float, default=0.9995, help="share of the counted tokens to cover")
    group.add_argument("--size", type=int, help="keep exactly this many ids (the most frequent)")
    s = sub.add_parser("slice", help="write a base model with the reduced lm_head")
    s.add_argument("--jittor_base_weights", default="", help="the full model (.pkl / .safetensors / HF folder)")
    s.add_argument("--vocab", required=True, help="folder with vocab.json (build's --output)")
    s.add_argument("--output", required=True, help="the reduced model's weights file, in a folder of its own")
    s.add_argument("--slice_embedding", action="store_true", help="cut the embedding rows too (inputs outside "
                   "the vocabulary then become an error)")
    d = sub.add_parser("draft", help="the most frequent reply tokens of token samples, for --draft_vocab")
    d.add_argument("--data", nargs="+", required=True, help="token samples (.npz, scripts/distill_ids.py samples)")
    d.add_argument("--size", type=int, default=8192, help="how many token ids to keep")
    d.add_argument("--output", required=True, help="the JSON file to write")
    args = p.parse_args(argv)
    {"build": run_build, "slice": run_slice, "draft": run_draft}[args.cmd](args)


def run_build(args):
    from medusa import cli
    from medusa.settings import ModelArgs

    if args.size is None and not 0 < args.coverage <= 1:
        raise UsageError(f"--coverage must be in (0, 1], got {args.coverage}")
    if args.size is not None and args.size < 1:
        raise UsageError(f"--size must be >= 1, got {args.size}")
    for f in args.data:
        if not Path(f).is_file():
            raise UsageError(f"--data {f}: no such file")
    out = Path(args.output) / VOCAB_FILE
    if out.exists():
        raise UsageError(f"{out} exists: choose another --output")
    plan = cli.plan(ModelArgs(base_model_path=args.base_model_path, jittor_base_weights=args.jittor_base_weights,
                              device="cpu"), heads="none")
    vocab = build(args.data, plan.tokenizer, plan.eos_ids, plan.config.vocab_size, args.coverage, args.size)
    vocab["tokenizer_of"] = str(plan.source)
    from medusa.files import atomic_write

    atomic_write(out, json.dumps(vocab, indent=1))
    cover = ", ".join(f"{Path(k).name}: {v['all_tokens']:.4%} of tokens, {v['reply_tokens']:.4%} of reply tokens"
                      for k, v in vocab["coverage"].items())
    print(f"wrote {out}: {vocab['size']} of {vocab['original_vocab_size']} tokens ({cover})", file=sys.stderr)


def run_slice(args):
    from medusa import weights

    src = args.jittor_base_weights or weights.ensure_default_model("float32")
    out = slice_model(src, args.vocab, args.output, args.slice_embedding)
    print(f"wrote {out} (+ config.json and tokenizer files)", file=sys.stderr)


if __name__ == "__main__":
    from medusa import cli

    cli.run(main)
