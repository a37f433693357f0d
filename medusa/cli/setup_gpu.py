"""`medusa setup-gpu`: patch Jittor for CUDA 13 and check it on this GPU (runtime/cuda_setup.py)."""
import argparse
import json
import sys
import traceback
from pathlib import Path

from medusa import cli
from medusa.runtime.cuda_setup import SetupError, mpi_env, nccl_env, prepare, self_check, shell_exports
from medusa.runtime.cuda_setup import __doc__ as cuda_setup_doc
from medusa.runtime.files import medusa_home


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=cuda_setup_doc.split("\n")[0])
    parser.add_argument("--check-only", action="store_true", help="report, do not patch or run")
    parser.add_argument("--patch-only", action="store_true", help="patch, skip the self-check "
                        "(~2.5 min of kernel compiles on a fresh machine)")
    parser.add_argument("--force", action="store_true", help="patch even without CUDA 13")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--mpi-env", metavar="OPENMPI_PREFIX", help="print the exports for data parallel "
                        "training on GPUs (Open MPI there, NCCL from pip) and exit; no patching")
    args = parser.parse_args(argv)
    if args.mpi_env:
        try:
            sys.stdout.write(shell_exports({**mpi_env(Path(args.mpi_env)), **nccl_env(medusa_home())}))
            return 0
        except SetupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    report = {"ok": False}
    try:
        report.update(prepare(check_only=args.check_only, force=args.force))
        print(json.dumps({k: v for k, v in report.items() if k != "ok"}, indent=1), flush=True)
        if args.check_only or args.patch_only:
            report["ok"] = "needed" not in report["patches"].values()
        else:
            report.update(self_check(args.device))
            report["ok"] = all(c["ok"] for c in report["checks"].values())
            passed = sum(c["ok"] for c in report["checks"].values())
            print(f"self-check on {report['device']}: {passed}/{len(report['checks'])} passed")
    except SetupError as e:
        report["error"] = str(e)
        print(f"error: {e}", file=sys.stderr)
    except Exception as e:  # Jittor's import or compile failed: keep its message in the report
        report["error"] = repr(e)[-4000:]
        traceback.print_exc()
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    cli.start(main)
