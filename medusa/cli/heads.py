"""`medusa heads IN.jtr OUT.jtr --dtype float16`: the same heads stored in another dtype (heads/io.py)."""
import argparse
from pathlib import Path

from medusa import cli
from medusa.heads.io import STORE_DTYPES, load_heads, save_heads
from medusa.runtime.errors import UsageError


def main(argv=None):
    """python -m medusa heads IN.jtr OUT.jtr --dtype float16: the same heads stored in another dtype."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--dtype", choices=STORE_DTYPES, default="float16")
    args = p.parse_args(argv)
    if Path(args.output).exists():
        raise UsageError(f"{args.output} exists: choose another output (nothing is overwritten)")
    out = save_heads(load_heads(args.input), args.output, args.dtype)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB ({args.dtype})")


if __name__ == "__main__":
    cli.start(main)
