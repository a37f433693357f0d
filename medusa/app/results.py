"""Benchmark results: the summary of per-sample records, the results file, its plot.

A results file is `{"config", "environment", "samples", "summary"}` (see bench/benchmark.py);
the environment records the runtime options (runtime/options.py) beside the software and
device. The summary is a function of the samples only (`summarize`), so whoever reads a file can
recompute it; `write_results` does so on every write. No Jittor here except for `environment()`,
so reading and comparing results is cheap.
"""
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import medusa.runtime.options as options
from medusa.runtime.errors import UsageError
from medusa.runtime.files import atomic_write

# = medusa.decoding.loop.STAT_NAMES (test_bench checks); not imported so that reading results
# (summaries, compare.py) needs no Jittor
STAGES = ("init", "medusa", "tree", "posterior", "update")
SIDES = ("base", "medusa")
# settings that may change between an interrupted run and its --resume
RESUMABLE_KEYS = ("num_samples", "resume", "overwrite", "output", "plot")
# settings added after results were written: a file without one ran as this value
BEFORE_THE_SETTING = {"draft_vocab": "none"}


def max_new_tokens(config) -> int:
    """The reply length of a run (files written before the flag's rename say max_new_token)."""
    return config.get("max_new_tokens", config.get("max_new_token"))


# ---------------------------------------------------------------- summary
def summarize(samples, greedy):
    """Summary of the per-sample records (the only input, so a reader can recompute it).

    tokens_per_second = all new tokens / all wall time of that side; compression_ratio = Medusa's
    new tokens / its decoding steps; wall_time_<stage> = seconds per sample; speedup = medusa / base
    tokens per second; identical_outputs (greedy) = samples whose every turn has the same text.
    """
    summary = {"num_samples": len(samples), "num_turns": sum(len(s["turns"]) for s in samples),
               **_sides_summary(samples)}
    loads = [s["load_average_1m"] for s in samples if "load_average_1m" in s]
    if loads:
        summary["load_average_1m"] = sum(loads) / len(loads)   # CPU load while it ran
    if "speedup" in summary:
        summary["per_category"] = _per_category(samples)
        if greedy:
            summary["identical_outputs"] = sum(_identical(s) for s in samples)
            divergences = [{"id": s["id"], "turn": i, **t["divergence"]}
                           for s in samples for i, t in enumerate(s["turns"]) if "divergence" in t]
            if divergences:
                summary["divergences"] = divergences
    return summary


def _sides_summary(samples):
    """{"base": ..., "medusa": ..., "speedup": ...} for the sides present in `samples`."""
    out = {}
    for side in SIDES:
        runs = [t[side] for s in samples for t in s["turns"] if side in t]
        if runs:
            out[side] = _side_summary(runs, len(samples), side == "medusa")
    if len(out) == 2:
        out["speedup"] = _ratio(out["medusa"]["tokens_per_second"], out["base"]["tokens_per_second"])
    return out


def _side_summary(runs, num_samples, medusa):
    tokens = sum(r["new_tokens"] for r in runs)
    wall = sum(r["wall_time"] for r in runs)
    out = {"new_tokens": tokens, "wall_time": wall, "tokens_per_second": _ratio(tokens, wall)}
    if medusa:
        out["steps"] = sum(r["steps"] for r in runs)
        out["compression_ratio"] = _ratio(tokens, out["steps"])
        for stage in STAGES:
            out[f"wall_time_{stage}"] = sum(r["times"][stage] for r in runs) / max(num_samples, 1)
    return out


def _per_category(samples):
    groups = {}
    for s in samples:
        groups.setdefault(s["category"], []).append(s)
    table = {}
    for category, group in sorted(groups.items()):
        sides = _sides_summary(group)
        if "speedup" in sides:
            table[category] = {"samples": len(group), "speedup": sides["speedup"],
                               "base_tokens_per_second": sides["base"]["tokens_per_second"],
                               "medusa_tokens_per_second": sides["medusa"]["tokens_per_second"],
                               "compression_ratio": sides["medusa"]["compression_ratio"]}
    return table


def _identical(sample):
    return all("base" in t and "medusa" in t and t["base"]["text"] == t["medusa"]["text"]
               for t in sample["turns"])


def _ratio(a, b):
    return a / b if b else 0.0


# ---------------------------------------------------------------- results file
def environment():
    """Where the numbers come from: software, device, CPU and its load, git commit, date, and
    the runtime options ($MEDUSA_* switches: which kernels and loop ran)."""
    from medusa.runtime.backend import jt

    env = {"jittor": jt.__version__, "python": platform.python_version(),
           "device": "cuda" if jt.flags.use_cuda else "cpu", "cuda": bool(jt.has_cuda),
           "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain", "-uno")),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "options": options.as_dict()}
    if jt.flags.use_cuda:
        env["gpu"] = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return env


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args):
    return _run(["git", "-C", str(Path(__file__).resolve().parents[1]), *args])


def _run(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_results(path, results):
    """Recompute the summary from the samples and replace `path` atomically."""
    results["summary"] = summarize(results["samples"], results["config"]["greedy"])
    atomic_write(path, dumps_compact(results))
    return results


def dumps_compact(obj):
    """Indented JSON with lists of numbers (and lists of those, e.g. trees) on one line. A raw
    newline only occurs between JSON tokens (never inside a string), so patterns that start
    with "[\\n" touch no text."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    for pattern in (r"\[\n[\d\s,.eE+\-]*\]", r"\[\n(?:\s*\[[^\[\]\n]*\],?\n)+\s*\]"):
        text = re.sub(pattern, lambda m: re.sub(r"\s+", "", m.group()).replace(",", ", "), text)
    return text


def start_results(path, config, resume):
    """A fresh results dict, or the one at `path` when resuming (its config must match)."""
    if not (resume and Path(path).is_file()):
        return {"config": config, "environment": environment(), "samples": [], "summary": {}}
    results = read_results(path)
    old = {**BEFORE_THE_SETTING, **results["config"]}
    old = {k: v for k, v in old.items() if k not in RESUMABLE_KEYS}
    new = {k: v for k, v in config.items() if k not in RESUMABLE_KEYS}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise UsageError(f"{path}: cannot resume with different settings ("
                         + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
                         + "): run with the same flags, or give another --output to measure again")
    results["config"] = config
    return results


def read_results(path) -> dict:
    """The results file at `path`; a UsageError when it is damaged or not a results file."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:    # truncated by a full disk, or another file
        raise UsageError(f"{path}: not a readable results file ({e}): give another --output, or --overwrite "
                         "to measure again into it") from e
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict) \
            or not isinstance(results.get("samples"), list):
        raise UsageError(f"{path}: not a results file (no config and samples): give another --output, or "
                         "--overwrite to measure again into it")
    return results


# ---------------------------------------------------------------- plot
def plot_results(results, png):
    """Accepted-length histogram, per-category speedup and time breakdown, side by side."""
    import matplotlib

    matplotlib.use("Agg")   # files only; no display on CI machines
    import matplotlib.pyplot as plt

    summary, samples = results["summary"], results["samples"]
    fig, (ax_hist, ax_cat, ax_time) = plt.subplots(1, 3, figsize=(15, 4.2))
    accepts = [a for s in samples for t in s["turns"] if "medusa" in t for a in t["medusa"]["accept_lengths"]]
    if accepts:
        ax_hist.hist(accepts, bins=range(1, max(accepts) + 2), align="left", rwidth=0.8)
        ax_hist.set_xticks(range(1, max(accepts) + 1))
    ax_hist.set(title="tokens accepted per step", xlabel="accepted length", ylabel="steps")
    categories = summary.get("per_category", {})
    if categories:
        ax_cat.bar(list(categories), [c["speedup"] for c in categories.values()])
        ax_cat.axhline(summary["speedup"], color="k", ls="--", lw=1, label=f"all {summary['speedup']:.2f}x")
        ax_cat.axhline(1.0, color="grey", lw=0.8)
        ax_cat.legend()
        plt.setp(ax_cat.get_xticklabels(), rotation=40, ha="right")
    ax_cat.set(title="speedup per category", ylabel="medusa / base tokens/s")
    stages, seconds = _time_bars(summary)
    ax_time.barh(stages, seconds)
    ax_time.set(title="wall time per sample", xlabel="seconds")
    config = results["config"]
    fig.suptitle(f"{Path(config['output']).stem}  ({results['environment'].get('device')}, "
                 f"{summary['num_samples']} samples x {max_new_tokens(config)} tokens)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def _time_bars(summary):
    stages, seconds = [], []
    n = max(summary["num_samples"], 1)
    if "base" in summary:
        stages.append("base (all)")
        seconds.append(summary["base"]["wall_time"] / n)
    if "medusa" in summary:
        stages.append("medusa (all)")
        seconds.append(summary["medusa"]["wall_time"] / n)
        for stage in STAGES:
            stages.append(f"medusa: {stage}")
            seconds.append(summary["medusa"][f"wall_time_{stage}"])
    return stages[::-1], seconds[::-1]


def print_summary(summary, out=sys.stdout):
    for side in SIDES:
        if side in summary:
            s = summary[side]
            extra = f", compression {s['compression_ratio']:.2f}" if side == "medusa" else ""
            print(f"{side:>6}: {s['tokens_per_second']:.2f} tokens/s ({s['new_tokens']} tokens{extra})", file=out)
    if "speedup" in summary:
        print(f"speedup {summary['speedup']:.2f}x", file=out)
    if "identical_outputs" in summary:
        print(f"identical outputs {summary['identical_outputs']}/{summary['num_samples']}", file=out)
    for d in summary.get("divergences", []):
        gap = d.get("logit_gap")
        print(f"  {d['id']} turn {d['turn']}: first differs at token {d['position']}, "
              f"logit gap {'-' if gap is None else f'{gap:.4f}'} (top-2 margin {d['top2_margin']:.4f})", file=out)
