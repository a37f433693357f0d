"""`medusa cabin-prompts`: the in-cabin structured-output prompt set (data/cabin_prompts.py)."""
import argparse
import json
import sys
from pathlib import Path

from medusa import cli
from medusa.data.cabin_prompts import __doc__ as cabin_prompts_doc
from medusa.data.cabin_prompts import generate, split
from medusa.runtime.errors import UsageError


def main(argv=None):
    p = argparse.ArgumentParser(description=cabin_prompts_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num", type=int, default=2400, help="distinct prompts to make")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one_shot", type=float, default=0.9, help="share of prompts with a worked example first")
    args = p.parse_args(argv)
    if args.num < 10:
        raise UsageError("--num must be >= 10")
    out = Path(args.output_dir)
    train, held = split(generate(args.num, args.seed, args.one_shot), seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("train.jsonl", train), ("heldout.jsonl", held)):
        if (out / name).exists():
            raise UsageError(f"{out / name} exists: choose another --output_dir")
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(train)} train and {len(held)} held-out prompts to {out}", file=sys.stderr)


if __name__ == "__main__":
    cli.start(main)
