"""Full vs reduced-vocabulary base model on the same prompts, in one process: plain greedy on both,
the reduced model with and without the full-vocabulary check, and Medusa on the reduced base
with its heads.

    python -m medusa vocab-bench --full FULL.pkl --reduced REDUCED.pkl --data heldout.jsonl \
        [--medusa_weights heads_for_reduced.jtr] [--num_samples 40] [--max_new_tokens 128] \
        [--vocab_check 32] --output results/vocab_cabin.json

Sides (SIDES): "full" (plain greedy, the reference); "reduced" (the reduced head's own argmax,
as the users run it: fast, but where the full model picks a token outside the vocabulary the
output leaves it); "reduced_checked" (the same plus the full-vocabulary check every
--vocab_check tokens: the full model's output, see core.first_wrong); with heads,
"reduced_medusa" (Medusa on the reduced base, checked: lossless against the full model) and
"reduced_medusa_unchecked". A reduced model sliced from an untied one has no full head, so its
checked sides are left out.

Per prompt the sides take turns, after an untimed warm-up. Recorded: token ids, wall time,
whether each side's output equals the full model's (and the first position where it does not),
Medusa's accepted length per step. The summary gives tokens/s of each side, the ratios to the
full model's plain decoding, the bytes of weights a decode step streams, tokens per Medusa step,
the identical share of each side, and the reduced vocabulary's coverage of the full model's
replies. Written after every prompt (atomically, --resume continues), with a PNG beside it.
"""
import dataclasses
import json
import os
import time
from dataclasses import field
from pathlib import Path

from tqdm import tqdm

from medusa.app import loading
from medusa.app.results import environment
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.data.samples import chat_prompt_ids, load_prompts
from medusa.decoding.sampling import Sampling
from medusa.runtime.errors import UsageError
from medusa.runtime.files import atomic_write, json_default
from medusa.vocab.reduce import weight_bytes

# side -> (base, Medusa, full-vocabulary check)
SIDES = {"full": ("full", False, False), "reduced": ("reduced", False, False),
         "reduced_checked": ("reduced", False, True), "reduced_medusa": ("reduced", True, True),
         "reduced_medusa_unchecked": ("reduced", True, False)}


@dataclasses.dataclass
class VocabBenchArgs:
    full: str = field(metadata={"help": "the full base model (.pkl / HF folder)"})
    reduced: str = field(metadata={"help": "its reduced-vocabulary unit (python -m medusa vocab slice)"})
    data: str = field(metadata={"help": 'held-out prompts: JSONL of {"id", "category", "prompt"}'})
    output: str = field(metadata={"help": "results JSON (a PNG is written beside it)"})
    medusa_weights: str = field(default="", metadata={"help": "heads trained for the reduced base (optional)"})
    medusa_choices: str = field(default="8_node", metadata={"help": "tree for the Medusa side"})
    num_samples: int = field(default=40, metadata={"help": "first N prompts of --data"})
    max_new_tokens: int = field(default=128, metadata={"help": "new tokens per reply"})
    warmup_tokens: int = field(default=16, metadata={"help": "untimed tokens per side first"})
    vocab_check: int = field(default=32, metadata={"help": "tokens between full-vocabulary checks on the "
                                                           "checked sides"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted --output"})

    def __post_init__(self):
        for flag in ("full", "reduced", "data") + (("medusa_weights",) if self.medusa_weights else ()):
            if not Path(getattr(self, flag)).exists():
                raise UsageError(f"--{flag} {getattr(self, flag)}: no such file")
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.vocab_check < 1:
            raise UsageError("--num_samples, --max_new_tokens and --vocab_check must be >= 1")
        loading.check_writable(self.output, "--output")
        if Path(self.output).exists() and not self.resume:
            raise UsageError(f"--output {self.output} exists: pass --resume to continue it or choose another")


def load(args):
    device = "cpu"
    full = loading.load(loading.plan(ModelArgs(jittor_base_weights=args.full, device=device), heads="none"))
    settings = GenerationSettings(medusa_choices=args.medusa_choices)
    reduced = loading.load(loading.plan(ModelArgs(jittor_base_weights=args.reduced, medusa_weights=args.medusa_weights,
                                          device=device), settings, heads="optional"))
    if not reduced.model.vocab.reduced:
        raise UsageError(f"--reduced {args.reduced} has the full vocabulary: give the sliced unit")
    return full, reduced


def decode(side, full, reduced, ids, n, every):
    """-> record of one reply of `side`."""
    from medusa.decoding.core import generate
    from medusa.decoding.loop import medusa_generate

    base, medusa, checked = SIDES[side]
    setup = full if base == "full" else reduced
    sampling = Sampling(vocab_check=every if checked else 0)
    start = time.perf_counter()
    if medusa:
        out = medusa_generate(setup.model, setup.heads, ids, n, setup.choices, setup.eos_ids, sampling)
    else:
        out = generate(setup.model, ids, n, setup.eos_ids, sampling)
    record = {"output_ids": [int(t) for t in out.output_ids], "wall_time": time.perf_counter() - start}
    if medusa:
        record["accept_lengths"] = [int(a) for a in out.accept_lengths]
        record["prefill_time"] = float(out.times["init"])   # the prefill and the first token
    else:
        record["prefill_time"] = float(out.prefill_time)
    return record


def first_difference(a, b):
    """Index of the first position where two id lists differ (None when equal)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def summarize(samples, kept, bytes_full, bytes_reduced) -> dict:
    kept = set(kept)
    out = {"num_samples": len(samples), "bytes_per_step": {"full": bytes_full, "reduced": bytes_reduced}}
    sides = [side for side in SIDES if any(side in s for s in samples)]
    for side in sides:
        rows = [s[side] for s in samples if side in s]
        tokens, wall = sum(len(r["output_ids"]) for r in rows), sum(r["wall_time"] for r in rows)
        out[f"{side}_tokens_per_second"] = tokens / max(wall, 1e-9)
        decode_s = sum(r["wall_time"] - r["prefill_time"] for r in rows)   # after the first token
        out[f"{side}_decode_tokens_per_second"] = (tokens - len(rows)) / max(decode_s, 1e-9)
        if side == "full":
            continue
        out[f"{side}_vs_full"] = out[f"{side}_tokens_per_second"] / out["full_tokens_per_second"]
        out[f"{side}_vs_full_decode"] = out[f"{side}_decode_tokens_per_second"] / out["full_decode_tokens_per_second"]
        diffs = [s[side]["first_divergence"] for s in samples if side in s]
        out[f"{side}_identical_share"] = sum(d is None for d in diffs) / len(diffs)
        out[f"{side}_first_divergence"] = [d for d in diffs if d is not None]
        accepts = [a for r in rows for a in r.get("accept_lengths", [])]
        if accepts:
            out[f"{side}_tokens_per_step"] = sum(accepts) / len(accepts)
    full_tokens = [t for s in samples for t in s["full"]["output_ids"]]
    out["coverage_of_full_replies"] = sum(t in kept for t in full_tokens) / max(len(full_tokens), 1)
    return out


def plot(results, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    sides = [x for x in SIDES if f"{x}_tokens_per_second" in s]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    bars = a.bar([x.replace("_", "\n") for x in sides], [s[f"{x}_decode_tokens_per_second"] for x in sides])
    for bar, x in zip(bars, sides):
        same = 1.0 if x == "full" else s[f"{x}_identical_share"]
        a.annotate(f"{same:.0%} identical", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                   ha="center", va="bottom", fontsize=8)
    a.set(title="greedy decode tokens/s after the prefill (CPU)", ylabel="tokens/s")
    b.bar(["full", "reduced"], [s["bytes_per_step"]["full"] / 1e6, s["bytes_per_step"]["reduced"] / 1e6])
    b.set(title="weights streamed per step (MB)", ylabel="MB")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def run(args):
    prompts = load_prompts(args.data)[:args.num_samples]
    full, reduced = load(args)
    for p in prompts:
        loading.check_prompt_fits(reduced.plan, chat_prompt_ids(reduced.tokenizer, [{"role": "user", "content": p["prompt"]}]),
                              args.max_new_tokens, f"{args.data}: prompt {p['id']}")
    out = Path(args.output)
    results = json.loads(out.read_text()) if args.resume and out.is_file() else {
        "config": dataclasses.asdict(args), "environment": environment(), "samples": [], "summary": {}}
    done = {s["id"] for s in results["samples"]}
    sides = [side for side, (_, medusa, checked) in SIDES.items()
             if (not medusa or reduced.heads is not None) and (not checked or reduced.model.has_full_head)]
    kept = reduced.model.config.kept_ids
    sizes = (weight_bytes(full.model.config), weight_bytes(reduced.model.config))
    warm = chat_prompt_ids(full.tokenizer, [{"role": "user", "content": prompts[0]["prompt"]}])
    for side in sides:
        decode(side, full, reduced, warm, args.warmup_tokens, args.vocab_check)
    for p in tqdm([p for p in prompts if p["id"] not in done], desc="vocab bench", unit="prompt"):
        ids = chat_prompt_ids(full.tokenizer, [{"role": "user", "content": p["prompt"]}])
        sample = {"id": p["id"], "prompt_tokens": len(ids)}
        for side in sides:
            sample[side] = decode(side, full, reduced, ids, args.max_new_tokens, args.vocab_check)
        for side in sides[1:]:
            sample[side]["first_divergence"] = first_difference(sample[side]["output_ids"],
                                                                sample["full"]["output_ids"])
        if hasattr(os, "getloadavg"):
            sample["load_average_1m"] = os.getloadavg()[0]
        results["samples"].append(sample)
        results["summary"] = summarize(results["samples"], kept, sizes[0]["per_step"], sizes[1]["per_step"])
        atomic_write(out, json.dumps(results, indent=1, default=json_default))
    plot(results, out.with_suffix(".png"))
    return results
