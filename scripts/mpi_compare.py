"""Compare data-parallel training runs with one process on the same global batch (scripts/gpu_mpi.sh).

    python scripts/mpi_compare.py REFERENCE_DIR RUN_DIR... --output report.json

Each folder is a train_ddp.py --output_dir. For every run: its train records against the
reference's (tokens must match, the largest relative loss difference), the largest absolute and
relative difference of its final weights (last.jtr), and the optimizer steps per second from the
records' `seconds`: over the whole run, and past the first record (`steady_steps_per_s`, and
`samples_per_s` = that x the run's global batch; the first steps compile kernels). Exit status 1 when a run is missing or its tokens differ.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medusa.runtime.files import load_tensors  # noqa: E402


def records(run: Path) -> list:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


def compare(reference: Path, run: Path) -> dict:
    ref, got = records(reference), records(run)
    out = {"run": str(run), "train_records": len(got), "tokens_match": [r["tokens"] for r in ref] == [r["tokens"] for r in got],
           "loss_max_rel_diff": max((abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-12) for a, b in zip(ref, got)),
                                    default=None),
           "args": json.loads((run / "train_args.json").read_text()) if (run / "train_args.json").is_file() else None}
    if got and got[-1].get("seconds"):
        out["steps_per_s"] = got[-1]["step"] / got[-1]["seconds"]
    if len(got) >= 2 and got[-1]["seconds"] > got[0]["seconds"]:
        # past the first record: the first steps compile kernels (and, under MPI, the collectives)
        steady = (got[-1]["step"] - got[0]["step"]) / (got[-1]["seconds"] - got[0]["seconds"])
        out["steady_steps_per_s"] = steady
        if out["args"] and out["args"].get("global_batch"):
            out["samples_per_s"] = steady * out["args"]["global_batch"]
    a, b = load_tensors(reference / "last.jtr", "heads"), load_tensors(run / "last.jtr", "heads")
    diffs = {k: float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a}
    scale = max(float(np.abs(np.asarray(v)).max()) for v in a.values())
    out["weights_max_abs_diff"] = max(diffs.values())
    out["weights_max_abs_diff_over_max_weight"] = out["weights_max_abs_diff"] / max(scale, 1e-12)
    out["worst_tensor"] = max(diffs, key=diffs.get)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reference")
    p.add_argument("runs", nargs="+")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    reference, report, ok = Path(args.reference), {"reference": args.reference, "runs": []}, True
    for run in map(Path, args.runs):
        if not (run / "last.jtr").is_file() or not (reference / "last.jtr").is_file():
            report["runs"].append({"run": str(run), "error": "no last.jtr: the run failed (see mpi.log)"})
            ok = False
            continue
        entry = compare(reference, run)
        ok &= entry["tokens_match"]
        report["runs"].append(entry)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    for entry in report["runs"]:
        print({k: entry.get(k) for k in ("run", "error", "tokens_match", "loss_max_rel_diff", "weights_max_abs_diff",
                                         "steps_per_s", "samples_per_s") if k in entry})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
