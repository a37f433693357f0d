"""`medusa prompt-gen`: synthetic chat prompts (data/prompt_gen.py)."""
import argparse
import json
import sys
from pathlib import Path

from medusa import cli
from medusa.data.prompt_gen import __doc__ as prompt_gen_doc
from medusa.data.prompt_gen import generate
from medusa.runtime.errors import UsageError
from medusa.runtime.files import atomic_write


def main(argv=None):
    p = argparse.ArgumentParser(description=prompt_gen_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--num", type=int, default=12000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.output)
    if out.exists():
        raise UsageError(f"--output {out} exists: choose another")
    records = generate(args.num, args.seed)
    atomic_write(out, "".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records)} prompts to {out}", file=sys.stderr)


if __name__ == "__main__":
    cli.start(main)
