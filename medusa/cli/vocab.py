"""`medusa vocab`: reduce the base model's output vocabulary, or the heads' draft vocabulary.

    medusa vocab build --data train.jsonl [more.jsonl ...] --output vocab_dir [--coverage 0.9995 | --size N]
    medusa vocab slice --jittor_base_weights model.pkl --vocab vocab_dir --output small/model.pkl [--slice_embedding]
    medusa vocab draft --data samples.npz --size 8192 --output heads_dir/draft_vocab.json

`build` counts the tokens of chat data (rendered with the model's chat template) and keeps the most
frequent ones until they cover --coverage of them (or the --size most frequent); `slice` writes a
base model whose lm_head holds only those rows. `draft` leaves the base model whole and only narrows
what the heads may propose (--draft_vocab), which stays lossless on any text. See vocab/reduce.py.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from medusa import cli
from medusa.app import loading
from medusa.app.settings import ModelArgs
from medusa.heads.draft_vocab import DRAFT_KEY
from medusa.model import weights
from medusa.runtime.errors import UsageError
from medusa.runtime.files import atomic_write
from medusa.vocab.reduce import VOCAB_FILE, build, draft_counts, slice_model


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
    plan = loading.plan(ModelArgs(base_model_path=args.base_model_path, jittor_base_weights=args.jittor_base_weights,
                              device="cpu"), heads="none")
    vocab = build(args.data, weights.load_tokenizer(plan.source), plan.eos_ids, plan.config.vocab_size, args.coverage, args.size)
    vocab["tokenizer_of"] = str(plan.source)
    atomic_write(out, json.dumps(vocab, indent=1))
    cover = ", ".join(f"{Path(k).name}: {v['all_tokens']:.4%} of tokens, {v['reply_tokens']:.4%} of reply tokens"
                      for k, v in vocab["coverage"].items())
    print(f"wrote {out}: {vocab['size']} of {vocab['original_vocab_size']} tokens ({cover})", file=sys.stderr)


def run_slice(args):
    src = args.jittor_base_weights or weights.ensure_default_model("float32")
    out = slice_model(src, args.vocab, args.output, args.slice_embedding)
    print(f"wrote {out} (+ config.json and tokenizer files)", file=sys.stderr)


if __name__ == "__main__":
    cli.start(main)
