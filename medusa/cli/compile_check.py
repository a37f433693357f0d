"""`medusa compile-check`: compile every CUDA kernel source with nvcc, no GPU needed (kernels/cuda/compile_check.py)."""
import argparse
import shutil
import sys
from pathlib import Path

from medusa import cli
from medusa.kernels.cuda.compile_check import __doc__ as compile_check_doc
from medusa.kernels.cuda.compile_check import compile_all


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=compile_check_doc.split("\n\n")[0])
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    p.add_argument("--keep", default=None, help="write the rendered .cu files here (default: a temporary folder)")
    p.add_argument("--jobs", type=int, default=2, help="nvcc processes at once (>= 1)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give at least 1")
    if not Path(args.nvcc).is_file():
        print(f"compile_check: no nvcc at {args.nvcc}; pass --nvcc PATH", file=sys.stderr)
        return 2
    results = compile_all(args.arch, args.nvcc, args.keep, args.jobs)
    fatal = {errors for ok, errors in results.values() if not ok and "fatal" in errors}
    if len(fatal) == 1 and all(not ok for ok, _ in results.values()):   # nvcc refused the run itself (e.g. --arch)
        print(f"compile_check: {fatal.pop().strip()} (--arch {args.arch}, --nvcc {args.nvcc})", file=sys.stderr)
        return 2
    for name, (ok, errors) in sorted(results.items()):
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f"\n{errors}" if errors else ""))
    failed = [n for n, (ok, _) in results.items() if not ok]
    print(f"{len(results) - len(failed)} of {len(results)} kernel sources compile for {args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.start(main)
