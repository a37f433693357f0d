"""Before (Jittor's matmul loop) vs after (OpenBLAS, medusa/kernels/cpu.py), in one run: matmul
shapes, one plain decoding step and one Medusa step per tree, with the per-stage breakdown.

    python scripts/bench_step.py [--trees 8_node mc_sim_7b_63] [--max_new_tokens 48] [--repeats 2]
                                 [--threads N] [--output results/cpu_step_breakdown.json]

Matmuls: [T, 576] x [576, N] for N = 1536 (SmolLM2's MLP; one weight, so it stays in cache) and
49152 (its vocab projection), T = 1, 9, 16, 64, a frozen weight as the model's; "blas" is what
model.matmul picks (the row names it), the two take turns, median of `--matmul_repeats` timings.

Steps: the embedded default SmolLM2-135M-Instruct in fp32 with random Medusa heads (4 heads,
share_lm_head=True: each head is one zero-initialised ResBlock before the base lm_head), greedy,
batch 1, on one bench prompt (chat template). The heads are untrained, so acceptance is low: this
measures the cost of a step, not the speed-up. Every configuration runs once untimed per kernel
first (Jittor compiles kernels on first use); then, `repeats` times, each kernel runs plain and
every tree in turn, so machine noise hits all alike. Reported per kernel and configuration:
median and mean milliseconds per step, for Medusa the mean milliseconds of each stage
(medusa.decoding.loop.STAT_NAMES, "init" excluded: it is the prefill), the mean accept length and
the step's cost in plain steps. The resolved config and the machine load are written with it.
"""
import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from medusa.data import samples as data
from medusa.decoding.core import stream_tokens
from medusa.decoding.loop import STAT_NAMES, medusa_stream
from medusa.heads.families import HeadConfig, build_heads
from medusa.kernels import cpu as kernels
from medusa.model import weights
from medusa.model.transformer import matmul, matmul_kernel
from medusa.runtime.backend import jt, use_device

ROOT = Path(__file__).resolve().parent.parent
STEP_STAGES = tuple(s for s in STAT_NAMES if s != "init")
KERNELS = {"jittor": False, "blas": True}   # name -> kernels.use_blas setting


@dataclasses.dataclass
class BenchStepConfig:
    trees: tuple = ("8_node", "mc_sim_7b_63")
    num_heads: int = 4
    max_new_tokens: int = 48
    repeats: int = 2
    matmul_rows: tuple = (1, 9, 16, 64)
    matmul_cols: tuple = (1536, 49152)
    matmul_repeats: int = 7
    threads: int = 0              # BLAS threads; 0: kernels' default (every available core)
    prompt_index: int = 0         # line of medusa/prompts/bench_prompts.jsonl
    seed: int = 0
    output: str = str(ROOT / "results" / "cpu_step_breakdown.json")


def parse_args(argv=None) -> BenchStepConfig:
    d = BenchStepConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(d):
        value = getattr(d, f.name)
        if isinstance(value, tuple):
            p.add_argument(f"--{f.name}", nargs="+", type=type(value[0]), default=list(value))
        else:
            p.add_argument(f"--{f.name}", type=type(value), default=value)
    args = vars(p.parse_args(argv))
    return BenchStepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})


# ---------------------------------------------------------------- matmuls
def time_matmul(x, w, calls):
    """Mean milliseconds of one `model.matmul(x, w)` over `calls` synced calls."""
    start = time.perf_counter()
    for _ in range(calls):
        matmul(x, w).sync()
    return 1e3 * (time.perf_counter() - start) / calls


def bench_matmuls(cfg):
    """One row per (T, N): median ms of each kernel, the kernels taking turns."""
    rng, rows = np.random.default_rng(cfg.seed), []
    for N in cfg.matmul_cols:
        w = jt.array(rng.standard_normal((576, N)).astype(np.float32)).stop_grad()
        calls = 20 if N < 10000 else 3
        for T in cfg.matmul_rows:
            x = jt.array(rng.standard_normal((T, 576)).astype(np.float32))
            ms = {name: [] for name in KERNELS}
            for name, on in KERNELS.items():            # untimed: compile
                kernels.use_blas(on)
                time_matmul(x, w, 1)
            for _ in range(cfg.matmul_repeats):
                for name, on in KERNELS.items():
                    kernels.use_blas(on)
                    ms[name].append(time_matmul(x, w, calls))
            row = {"T": T, "K": 576, "N": N, **{f"{k}_ms": float(np.median(v)) for k, v in ms.items()},
                   "blas_kernel": matmul_kernel(x, w, False).__name__}
            row["speedup"] = row["jittor_ms"] / row["blas_ms"]
            rows.append(row)
            print(f"[{T},576]x[576,{N}]: jittor {row['jittor_ms']:.2f} ms, blas {row['blas_ms']:.2f} ms "
                  f"({row['speedup']:.1f}x, {row['blas_kernel']})", flush=True)
    return rows


# ---------------------------------------------------------------- decoding steps
def plain_steps(model, ids, n):
    """Seconds of each plain decoding step (the prefill excluded)."""
    return [s for _, s in stream_tokens(model, ids, n)][1:]


def medusa_steps(model, heads, ids, n, tree):
    """One {stage: seconds} dict and the accept length of each Medusa step (prefill excluded)."""
    stats, accepts = [], []
    for i, (new, seconds) in enumerate(medusa_stream(model, heads, ids, n, tree)):
        if i > 0:
            stats.append(seconds)
            accepts.append(len(new))
    return stats, accepts


def summarize_plain(seconds):
    ms = 1e3 * np.asarray(seconds)
    return {"steps": len(ms), "median_ms": float(np.median(ms)), "mean_ms": float(ms.mean())}


def summarize_medusa(stats, accepts, plain_ms):
    # the last step stops before update/medusa (nothing left to propose): leave it out of the means
    full = [s for s in stats if set(STEP_STAGES) <= set(s)]
    totals = 1e3 * np.array([sum(s.values()) for s in full])
    stages = {name: float(1e3 * np.mean([s[name] for s in full])) for name in STEP_STAGES}
    median = float(np.median(totals))
    return {"steps": len(full), "median_ms": median, "mean_ms": float(totals.mean()),
            "stage_mean_ms": stages, "mean_accept_length": float(np.mean(accepts)),
            "step_vs_plain": median / plain_ms}


def bench_steps(cfg, model, heads, ids):
    """{kernel: {"plain": .., "medusa": {tree: ..}}}, every configuration interleaved."""
    plain = {name: [] for name in KERNELS}
    medusa = {name: {tree: ([], []) for tree in cfg.trees} for name in KERNELS}
    for name, on in KERNELS.items():                    # warm-up: compile kernels
        kernels.use_blas(on)
        plain_steps(model, ids, 8)
        for tree in cfg.trees:
            medusa_steps(model, heads, ids, 16, tree)
    for _ in range(cfg.repeats):
        for name, on in KERNELS.items():
            kernels.use_blas(on)
            plain[name] += plain_steps(model, ids, cfg.max_new_tokens)
            for tree in cfg.trees:
                stats, accepts = medusa_steps(model, heads, ids, cfg.max_new_tokens, tree)
                medusa[name][tree][0].extend(stats)
                medusa[name][tree][1].extend(accepts)
    report = {}
    for name in KERNELS:
        base = summarize_plain(plain[name])
        report[name] = {"plain": base, "medusa": {tree: summarize_medusa(*medusa[name][tree], base["median_ms"])
                                                  for tree in cfg.trees}}
    return report


def print_steps(steps):
    for name, row in steps.items():
        print(f"[{name}] plain decode step: {row['plain']['median_ms']:.1f} ms (median of {row['plain']['steps']})")
        for tree, r in row["medusa"].items():
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_mean_ms"].items())
            print(f"[{name}] {tree}: {r['median_ms']:.1f} ms/step ({r['step_vs_plain']:.2f}x plain; "
                  f"{stages} ms), accept {r['mean_accept_length']:.2f}")


def main(argv=None):
    cfg = parse_args(argv)
    use_device("cpu")
    threads = kernels.set_num_threads(cfg.threads or None)
    pkl = weights.ensure_default_model("float32")
    model = weights.load_model(pkl, "float32")
    tok = weights.load_tokenizer(pkl)
    mc = model.config
    jt.set_global_seed(cfg.seed)
    heads = build_heads(HeadConfig(num_heads=cfg.num_heads, hidden_size=mc.hidden_size,
                                   vocab_size=mc.vocab_size, share_lm_head=True))
    prompt = data.load_prompts(ROOT / "medusa" / "prompts" / "bench_prompts.jsonl")[cfg.prompt_index]
    ids = data.chat_prompt_ids(tok, [{"role": "user", "content": prompt["prompt"]}])
    load_before = os.getloadavg()

    matmuls = bench_matmuls(cfg)
    steps = bench_steps(cfg, model, heads, ids)
    kernels.use_blas(True)
    print_steps(steps)
    report = {"config": dataclasses.asdict(cfg), "device": "cpu", "model": str(pkl.name),
              "blas_threads": threads,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "prompt_tokens": len(ids), "matmul": matmuls, "steps": steps}
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
