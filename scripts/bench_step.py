"""Time of one Medusa decoding step vs one plain decoding step, with the per-stage breakdown.

    python scripts/bench_step.py [--trees 8_node mc_sim_7b_63] [--max_new_tokens 64] [--repeats 2]
                                 [--output results/cpu_step_breakdown.json]

Runs the embedded default SmolLM2-135M-Instruct in fp32 with random Medusa heads (4 heads,
share_lm_head=True: each head is one zero-initialised ResBlock before the base lm_head), greedy,
batch 1, on one bench prompt (chat template). The heads are untrained, so acceptance is low: this
measures the cost of a step, not the speed-up. Every configuration runs once untimed first
(Jittor compiles kernels on first use); then plain and each tree run in turn, `repeats` times, so
machine noise hits all alike. Reported per configuration: median and mean milliseconds per step,
and for Medusa the mean milliseconds per step of each stage (medusa.decoding.STAT_NAMES, "init"
excluded: it is the prefill) and the mean accept length. The resolved config and the machine load
are written with the numbers.
"""
import argparse
import dataclasses
import json
import os
import platform
from pathlib import Path

import numpy as np

from medusa import data, weights
from medusa.decoding import STAT_NAMES, medusa_stream
from medusa.generate import stream_tokens
from medusa.heads import HeadConfig, build_heads
from medusa.runtime import jt, use_device

ROOT = Path(__file__).resolve().parent.parent
STEP_STAGES = tuple(s for s in STAT_NAMES if s != "init")


@dataclasses.dataclass
class BenchStepConfig:
    trees: tuple = ("8_node", "mc_sim_7b_63")
    num_heads: int = 4
    max_new_tokens: int = 64
    repeats: int = 2
    prompt_index: int = 0         # line of medusa/prompts/bench_prompts.jsonl
    device: str = "cpu"
    seed: int = 0
    output: str = str(ROOT / "results" / "cpu_step_breakdown.json")


def parse_args(argv=None) -> BenchStepConfig:
    d = BenchStepConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", nargs="+", default=list(d.trees))
    p.add_argument("--num_heads", type=int, default=d.num_heads)
    p.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--prompt_index", type=int, default=d.prompt_index)
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--output", default=d.output)
    args = vars(p.parse_args(argv))
    return BenchStepConfig(**{**args, "trees": tuple(args["trees"])})


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


def summarize_medusa(stats, accepts):
    # the last step stops before update/medusa (nothing left to propose): leave it out of the means
    full = [s for s in stats if set(STEP_STAGES) <= set(s)]
    totals = 1e3 * np.array([sum(s.values()) for s in full])
    stages = {name: float(1e3 * np.mean([s[name] for s in full])) for name in STEP_STAGES}
    return {"steps": len(full), "median_ms": float(np.median(totals)), "mean_ms": float(totals.mean()),
            "stage_mean_ms": stages, "mean_accept_length": float(np.mean(accepts))}


def main(argv=None):
    cfg = parse_args(argv)
    device = use_device(cfg.device)
    pkl = weights.ensure_default_model("float32")
    model = weights.load_model(pkl, "float32")
    tok = weights.load_tokenizer(pkl)
    mc = model.config
    jt.set_global_seed(cfg.seed)
    heads = build_heads(HeadConfig(num_heads=cfg.num_heads, hidden_size=mc.hidden_size,
                                   vocab_size=mc.vocab_size, share_lm_head=True))
    prompt = data.load_prompts(ROOT / "medusa" / "prompts" / "bench_prompts.jsonl")[cfg.prompt_index]
    ids = data.chat_prompt_ids(tok, [{"role": "user", "content": prompt["prompt"]}])

    n = cfg.max_new_tokens
    plain_steps(model, ids, 8)                                  # warm-up: compile kernels
    for tree in cfg.trees:
        medusa_steps(model, heads, ids, 16, tree)
    plain, medusa = [], {tree: ([], []) for tree in cfg.trees}
    for r in range(cfg.repeats):                                # interleaved: noise hits all alike
        plain += plain_steps(model, ids, n)
        for tree in cfg.trees:
            stats, accepts = medusa_steps(model, heads, ids, n, tree)
            medusa[tree][0].extend(stats)
            medusa[tree][1].extend(accepts)

    report = {"config": dataclasses.asdict(cfg), "device": device, "model": str(pkl.name),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": os.getloadavg()},
              "prompt_tokens": len(ids), "plain": summarize_plain(plain), "medusa": {}}
    base = report["plain"]["median_ms"]
    print(f"plain decode step: {base:.1f} ms (median of {len(plain)})")
    for tree in cfg.trees:
        row = summarize_medusa(*medusa[tree])
        row["step_vs_plain"] = row["median_ms"] / base
        report["medusa"][tree] = row
        stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stage_mean_ms"].items())
        print(f"{tree}: {row['median_ms']:.1f} ms/step ({row['step_vs_plain']:.2f}x plain; {stages} ms), "
              f"accept {row['mean_accept_length']:.2f}")
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
