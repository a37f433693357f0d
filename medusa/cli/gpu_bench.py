"""`medusa gpu-bench`: runs one side (or the report) of the GPU benchmark (bench/gpu/)."""
import argparse
from dataclasses import asdict
from pathlib import Path

from medusa import cli
from medusa.bench.gpu.common import DRY_RUN, SHAPES, BenchConfig, write_json
from medusa.runtime import options


def parse_args(argv=None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__)
    defaults = BenchConfig()
    p.add_argument("--side", choices=["jittor", "torch", "report"], required=True)
    p.add_argument("--out", default=defaults.out)
    p.add_argument("--ref_dir", default="", help="where the torch side saves the weights the Jittor "
                   "side checks against (default OUT/ref)")
    p.add_argument("--shapes", nargs="+", default=defaults.shapes, choices=sorted(SHAPES))
    p.add_argument("--trees", nargs="+", default=defaults.trees)
    for name in ("prompt_len", "new_tokens", "medusa_steps", "part_steps", "warmup", "seed"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    p.add_argument("--measure_s", type=float, default=defaults.measure_s)
    p.add_argument("--device", choices=["cuda", "cpu"], default=defaults.device)
    p.add_argument("--dtype", choices=["float16", "float32"], default="")
    p.add_argument("--results", default="", help="report side: merged JSON to write")
    p.add_argument("--runs", nargs="+", default=[], help="report side: OUT folders of several "
                   "runs, merged in order (a later run's measurement wins); default --out")
    p.add_argument("--note", action="append", default=[], help="report side: a note to keep")
    p.add_argument("--skip_plain_ops", action="store_true", help="jittor side: skip the decode with Jittor's "
                   "own ops (the before of the fused kernels), to save time")
    p.add_argument("--dry_run", action="store_true", help="tiny model, few steps (CPU is fine)")
    args = vars(p.parse_args(argv))
    if args.pop("dry_run"):
        args.update(DRY_RUN)
    return BenchConfig(**args)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if cfg.side == "report":
        from medusa.bench.gpu.report import write_report

        write_report(cfg.runs or [cfg.out], cfg.results or str(Path(cfg.out) / "gpu_bench.json"), cfg.note)
        return 0
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.out) / f"gpu_{cfg.side}_config.json", {**asdict(cfg), "options": options.as_dict()})
    if cfg.side == "torch":
        from medusa.bench.gpu.torch_side import run
    else:
        from medusa.bench.gpu.jittor_side import run
    recorder = run(cfg)
    return 1 if recorder.data["errors"] else 0


if __name__ == "__main__":
    cli.start(main)
