"""Compare benchmark result files side by side.

    python -m medusa compare results/a.json results/b.json          # one column per run
    python -m medusa compare results/*.json --markdown              # one row per run (README table)
    python -m medusa compare results/heads/*.json --png results/heads/tokens_per_step.png   # and a chart

Summaries are recomputed from each file's samples with `results.summarize`, so a table never
shows numbers its file does not support.
"""
import json
from pathlib import Path

from medusa.app.results import STAGES, max_new_tokens, summarize
from medusa.runtime.errors import UsageError

# (label, getter of (config, summary, environment)) for every metric shown; a getter may
# raise KeyError/TypeError when the run lacks it (base-only runs have no Medusa numbers).
METRICS = [
    ("heads", lambda c, s, e: c["head_config"]["family"] if c.get("head_config") else "-"),
    ("tree", lambda c, s, e: f"{Path(c.get('tree_spec') or c['medusa_choices']).stem} "
                             + (f"({len(c['tree'])} nodes)" if c.get("tree") else "(a tree a step)")),
    ("mode", lambda c, s, e: "greedy" if c["greedy"] else f"{c['sampling_mode']} T={c['temperature']:g}"),
    ("samples", lambda c, s, e: f"{s['num_samples']} x {max_new_tokens(c)}"),
    ("base tokens/s", lambda c, s, e: f"{s['base']['tokens_per_second']:.2f}"),
    ("medusa tokens/s", lambda c, s, e: f"{s['medusa']['tokens_per_second']:.2f}"),
    ("speedup", lambda c, s, e: f"{s['speedup']:.2f}x"),
    ("compression", lambda c, s, e: f"{s['medusa']['compression_ratio']:.2f}"),
    ("identical", lambda c, s, e: f"{s['identical_outputs']}/{s['num_samples']}"),
    *[(f"wall_time_{st}", lambda c, s, e, st=st: f"{s['medusa'][f'wall_time_{st}']:.3f}") for st in STAGES],
    ("device", lambda c, s, e: e["device"] + (f" ({e['gpu']})" if e.get("gpu") else "")),
    ("load avg", lambda c, s, e: f"{s.get('load_average_1m', e['load_average'][0]):.1f}"),
    ("commit", lambda c, s, e: (e["git_commit"] or "?")[:8] + ("+" if e.get("git_dirty") else "")),
]
README_METRICS = ("heads", "tree", "samples", "base tokens/s", "medusa tokens/s", "speedup", "compression",
                  "identical", "load avg")


def load_run(path):
    """(name, config, summary recomputed from the samples, environment) of a results file."""
    try:
        results = json.loads(Path(path).read_text())
        summary = summarize(results["samples"], results["config"]["greedy"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a readable results file of test_medusa_benchmark.py ({type(e).__name__}: {e})") from e
    return Path(path).stem, results["config"], summary, results["environment"]


def cells(run, labels):
    _, config, summary, env = run
    row = []
    for label, get in METRICS:
        if label in labels:
            try:
                row.append(get(config, summary, env))
            except (KeyError, TypeError):
                row.append("-")
    return row


def text_table(runs):
    """Metrics down, runs across."""
    labels = [label for label, _ in METRICS]
    columns = [cells(run, labels) for run in runs]
    table = [["run", *[run[0] for run in runs]],
             *[[label, *[column[i] for column in columns]] for i, label in enumerate(labels)]]
    widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)


def markdown_table(runs, labels=README_METRICS):
    """Runs down, the README metrics across, as a Markdown table."""
    labels = [label for label, _ in METRICS if label in labels]
    lines = ["| run | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    lines += ["| " + " | ".join([run[0], *cells(run, labels)]) + " |" for run in runs]
    return "\n".join(lines)


def plot_runs(runs, png):
    """Tokens per step and speedup of each run (Medusa side), two bar charts one above the
    other, runs in the given order; runs without Medusa numbers are left out. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")   # files only; no display on CI machines
    import matplotlib.pyplot as plt

    rows = []
    for name, config, summary, env in runs:
        try:
            rows.append((name, summary["medusa"]["compression_ratio"], summary["speedup"]))
        except (KeyError, TypeError):
            continue
    if not rows:
        raise UsageError("--png: no run has Medusa numbers to plot")
    names, accept, speedup = zip(*rows)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.55 * len(rows) + 2), 6.5), sharex=True)
    for ax, values, label, color in ((axes[0], accept, "tokens per step", "C0"), (axes[1], speedup, "speedup", "C1")):
        bars = ax.bar(range(len(rows)), values, color=color)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")          # plain decoding
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return Path(png)
