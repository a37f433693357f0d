"""Report of head-training runs: validation accuracy per epoch (a PNG) and the best epoch (a table).

    python -m medusa train-report --runs medusa=ckpt/m rnn=ckpt/r --output medusa/trained/smollm2_heads_val.png

Each run is LABEL=PATH, PATH a `metrics.jsonl` of medusa/training/trainer.py or the folder holding one.
Only its "val" records are read (one per epoch: loss, and head{k}_loss/_top1/_top5 per head).
The table row of a run is its epoch of lowest val loss, the epoch whose heads best.jtr holds.
"""
import math
from pathlib import Path

from medusa.data.samples import read_located
from medusa.runtime.errors import MissingFileError, UsageError


def num_heads(record) -> int:
    """K of a val record: its head{k}_top1 keys run k = 0..K-1."""
    k = 0
    while f"head{k}_top1" in record:
        k += 1
    return k


def read_val(path) -> list:
    """The val records of one metrics file, checked to carry what the report reads."""
    records = []
    for where, record in read_located(path, partial_tail="skip"):   # a killed run leaves half a line
        if not isinstance(record, dict) or record.get("split") != "val":
            continue
        K = num_heads(record)
        missing = [key for key in ("epoch", "loss", *[f"head{k}_top5" for k in range(max(K, 1))]) if key not in record]
        if missing:
            raise UsageError(f"{path}: {where}: a val record without {', '.join(missing)}: not a log of medusa/training/trainer.py")
        if records and K != num_heads(records[0]):
            raise UsageError(f"{path}: {where}: {K} heads, the first val record has {num_heads(records[0])}: "
                             "one metrics.jsonl per run")
        records.append(record)
    return records


def load_runs(specs) -> dict:
    """{label: [val records]} of "LABEL=PATH" specs, in the order given."""
    runs = {}
    for spec in specs:
        label, eq, path = spec.partition("=")
        if not (eq and label and path):
            raise UsageError(f"--runs {spec!r}: give LABEL=PATH (PATH a metrics.jsonl or the folder holding one)")
        if label in runs:
            raise UsageError(f"--runs {spec!r}: label {label!r} is given twice: give each run its own label")
        path = Path(path) / "metrics.jsonl" if Path(path).is_dir() else Path(path)
        if not path.is_file():
            raise MissingFileError(f"--runs {spec!r}: {path} does not exist: give the metrics.jsonl of a "
                                   "training run (train_ddp.py, train_rnn.py and train_moe.py write it in --output_dir)")
        runs[label] = read_val(path)
        if not runs[label]:
            raise UsageError(f"--runs {spec!r}: {path} has no val record: train with a validation split "
                             "(--val_ratio > 0) and let it finish at least one epoch")
    return runs


def best(records) -> dict:
    """The record of lowest val loss (the first of ties; NaN never wins), as the trainer picks best.jtr."""
    return min(records, key=lambda r: math.inf if math.isnan(r["loss"]) else r["loss"])


# ---------------------------------------------------------------- report
def plot(runs, png):
    """One panel per run, side by side: validation top-1 (solid) and top-5 (dashed) per epoch, a colour per head."""
    import matplotlib

    matplotlib.use("Agg")   # files only; no display on CI machines
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), sharey=True, squeeze=False)
    for ax, (label, records) in zip(axes[0], runs.items()):
        epochs = [r["epoch"] for r in records]
        for k in range(num_heads(records[0])):
            ax.plot(epochs, [r[f"head{k}_top1"] for r in records], color=f"C{k}", marker=".",
                    label=f"head {k} (token t+{k + 2})")
            ax.plot(epochs, [r[f"head{k}_top5"] for r in records], color=f"C{k}", ls="--", marker=".")
        ax.set(title=label, xlabel="epoch", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("validation accuracy (top-1 solid, top-5 dashed)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def table(runs) -> str:
    """Markdown, one row per run: epochs evaluated, the best epoch, its val loss and per-head top-1 / top-5."""
    K = max(num_heads(records[0]) for records in runs.values())
    lines = ["| run | epochs | best epoch | val loss | " + " | ".join(f"head {k}" for k in range(K)) + " |",
             "| --- " * (K + 4) + "|"]
    for label, records in runs.items():
        b = best(records)
        heads = [f"{b[f'head{k}_top1']:.3f} / {b[f'head{k}_top5']:.3f}" if f"head{k}_top1" in b else "-"
                 for k in range(K)]
        lines.append(f"| {label} | {len(records)} | {b['epoch']:g} | {b['loss']:.2f} | " + " | ".join(heads) + " |")
    return "\n".join(lines)
