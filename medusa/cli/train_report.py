"""`medusa train-report`: validation curves of training runs (training/report.py)."""
import argparse
import sys
from pathlib import Path

from medusa import cli
from medusa.app import loading
from medusa.runtime.errors import UsageError
from medusa.training.report import __doc__ as report_doc
from medusa.training.report import load_runs, plot, table


def main(argv=None):
    p = argparse.ArgumentParser(description=report_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, metavar="LABEL=PATH",
                   help="training runs: a metrics.jsonl of train_ddp.py/train_rnn.py/train_moe.py, or its folder")
    p.add_argument("--output", required=True, help="the PNG to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output {output}: give a .png file name")
    if output.exists() and not args.force:
        raise UsageError(f"--output {output} exists: pass --force to overwrite it, or choose another name")
    loading.check_writable(output, "--output")
    runs = load_runs(args.runs)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, output)
    print(table(runs))
    print(f"wrote {output}", file=sys.stderr)   # stdout is the table alone, to paste or redirect


if __name__ == "__main__":
    cli.start(main)
