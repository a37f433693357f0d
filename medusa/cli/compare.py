"""`medusa compare`: results files side by side (bench/compare.py)."""
import argparse
from pathlib import Path

from medusa import cli
from medusa.bench.compare import __doc__ as compare_doc
from medusa.bench.compare import load_run, markdown_table, plot_runs, text_table
from medusa.runtime.errors import UsageError


def main(argv=None):
    p = argparse.ArgumentParser(description=compare_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results JSON files of test_medusa_benchmark.py")
    p.add_argument("--markdown", action="store_true", help="one row per run, Markdown")
    p.add_argument("--png", default="", help="also write a chart of tokens per step and speedup per run (refuses "
                                             "to replace an existing file)")
    args = p.parse_args(argv)
    if args.png and Path(args.png).exists():
        raise UsageError(f"--png {args.png} exists: choose another name (nothing is overwritten)")
    runs = [load_run(path) for path in args.results]
    print(markdown_table(runs) if args.markdown else text_table(runs))
    if args.png:
        plot_runs(runs, args.png)


if __name__ == "__main__":
    cli.start(main)
