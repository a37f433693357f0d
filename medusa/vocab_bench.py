"""Full vs reduced-vocabulary base model on the same prompts, in one process: plain greedy on both,
and Medusa on the reduced base with its heads.

    python -m medusa.vocab_bench --full FULL.pkl --reduced REDUCED.pkl --data heldout.jsonl \
        [--medusa_weights heads_for_reduced.jtr] [--num_samples 40] [--max_new_tokens 128] \
        --output results/vocab_cabin.json

Per prompt (chat template, greedy) the three decoders take turns, after an untimed warm-up.
Recorded: token ids, wall time, whether the reduced model's output equals the full model's (and
the first position where it does not), Medusa's accepted length per step. The summary gives
tokens/s of each side, the ratios to the full model's plain decoding, the bytes of weights a
decode step streams, tokens per Medusa step, the identical share, and the reduced vocabulary's
coverage of the full model's replies. Written after every prompt (atomically, --resume
continues), with a PNG beside it.
"""
import dataclasses
import json
import os
import time
from dataclasses import field
from pathlib import Path

from tqdm import tqdm

from medusa import cli
from medusa.errors import UsageError
from medusa.files import atomic_write, json_default

SIDES = ("full", "reduced", "reduced_medusa")


@dataclasses.dataclass
class VocabBenchArgs:
    full: str = field(metadata={"help": "the full base model (.pkl / HF folder)"})
    reduced: str = field(metadata={"help": "its reduced-vocabulary unit (python -m medusa.vocab slice)"})
    data: str = field(metadata={"help": 'held-out prompts: JSONL of {"id", "category", "prompt"}'})
    output: str = field(metadata={"help": "results JSON (a PNG is written beside it)"})
    medusa_weights: str = field(default="", metadata={"help": "heads trained for the reduced base (optional)"})
    medusa_choices: str = field(default="8_node", metadata={"help": "tree for the Medusa side"})
    num_samples: int = field(default=40, metadata={"help": "first N prompts of --data"})
    max_new_tokens: int = field(default=128, metadata={"help": "new tokens per reply"})
    warmup_tokens: int = field(default=16, metadata={"help": "untimed tokens per side first"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted --output"})

    def __post_init__(self):
        for flag in ("full", "reduced", "data") + (("medusa_weights",) if self.medusa_weights else ()):
            if not Path(getattr(self, flag)).exists():
                raise UsageError(f"--{flag} {getattr(self, flag)}: no such file")
        if self.num_samples < 1 or self.max_new_tokens < 1:
            raise UsageError("--num_samples and --max_new_tokens must be >= 1")
        cli.check_writable(self.output, "--output")
        if Path(self.output).exists() and not self.resume:
            raise UsageError(f"--output {self.output} exists: pass --resume to continue it or choose another")


def load(args):
    from medusa.settings import GenerationSettings, ModelArgs

    device = "cpu"
    full = cli.load(cli.plan(ModelArgs(jittor_base_weights=args.full, device=device), heads="none"))
    settings = GenerationSettings(medusa_choices=args.medusa_choices)
    reduced = cli.load(cli.plan(ModelArgs(jittor_base_weights=args.reduced, medusa_weights=args.medusa_weights,
                                          device=device), settings, heads="optional"))
    if not reduced.model.vocab.reduced:
        raise UsageError(f"--reduced {args.reduced} has the full vocabulary: give the sliced unit")
    return full, reduced


def decode(side, full, reduced, ids, n):
    """-> record of one reply of `side`."""
    from medusa.core import generate
    from medusa.decoding import medusa_generate

    start = time.perf_counter()
    if side == "reduced_medusa":
        out = medusa_generate(reduced.model, reduced.heads, ids, n, reduced.choices, reduced.eos_ids)
    else:
        setup = full if side == "full" else reduced
        out = generate(setup.model, ids, n, setup.eos_ids)
    record = {"output_ids": [int(t) for t in out.output_ids], "wall_time": time.perf_counter() - start}
    if side == "reduced_medusa":
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
    for side in SIDES:
        rows = [s[side] for s in samples if side in s]
        if rows:
            tokens, wall = sum(len(r["output_ids"]) for r in rows), sum(r["wall_time"] for r in rows)
            out[f"{side}_tokens_per_second"] = tokens / max(wall, 1e-9)
            decode_s = sum(r["wall_time"] - r["prefill_time"] for r in rows)   # after the first token
            out[f"{side}_decode_tokens_per_second"] = (tokens - len(rows)) / max(decode_s, 1e-9)
    for side in ("reduced", "reduced_medusa"):
        for kind in ("tokens_per_second", "decode_tokens_per_second"):
            if f"{side}_{kind}" in out:
                out[f"{side}_vs_full" + ("_decode" if kind.startswith("decode") else "")] = \
                    out[f"{side}_{kind}"] / out[f"full_{kind}"]
    accepts = [a for s in samples if "reduced_medusa" in s for a in s["reduced_medusa"]["accept_lengths"]]
    if accepts:
        out["medusa_tokens_per_step"] = sum(accepts) / len(accepts)
        out["medusa_equals_reduced_plain"] = sum(s["reduced_medusa"]["output_ids"] == s["reduced"]["output_ids"]
                                                 for s in samples if "reduced_medusa" in s)
    identical = [s["reduced_identical"] for s in samples]
    out["reduced_identical_share"] = sum(identical) / len(identical)
    out["first_divergence"] = [s["first_divergence"] for s in samples if not s["reduced_identical"]]
    full_tokens = [t for s in samples for t in s["full"]["output_ids"]]
    out["coverage_of_full_replies"] = sum(t in kept for t in full_tokens) / max(len(full_tokens), 1)
    return out


def plot(results, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    sides = [x for x in SIDES if f"{x}_tokens_per_second" in s]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(sides, [s[f"{x}_decode_tokens_per_second"] for x in sides])
    a.set(title="greedy decode tokens/s after the prefill (CPU)", ylabel="tokens/s")
    b.bar(["full", "reduced"], [s["bytes_per_step"]["full"] / 1e6, s["bytes_per_step"]["reduced"] / 1e6])
    b.set(title=f"weights streamed per step (MB); identical {s['reduced_identical_share']:.0%}", ylabel="MB")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def run(args):
    from medusa.data import chat_prompt_ids, load_prompts
    from medusa.results import environment
    from medusa.vocab import weight_bytes

    prompts = load_prompts(args.data)[:args.num_samples]
    full, reduced = load(args)
    for p in prompts:
        cli.check_prompt_fits(reduced.plan, chat_prompt_ids(reduced.tokenizer, [{"role": "user", "content": p["prompt"]}]),
                              args.max_new_tokens, f"{args.data}: prompt {p['id']}")
    out = Path(args.output)
    results = json.loads(out.read_text()) if args.resume and out.is_file() else {
        "config": dataclasses.asdict(args), "environment": environment(), "samples": [], "summary": {}}
    done = {s["id"] for s in results["samples"]}
    sides = SIDES if reduced.heads is not None else SIDES[:2]
    kept = reduced.model.config.kept_ids
    sizes = (weight_bytes(full.model.config), weight_bytes(reduced.model.config))
    warm = chat_prompt_ids(full.tokenizer, [{"role": "user", "content": prompts[0]["prompt"]}])
    for side in sides:
        decode(side, full, reduced, warm, args.warmup_tokens)
    for p in tqdm([p for p in prompts if p["id"] not in done], desc="vocab bench", unit="prompt"):
        ids = chat_prompt_ids(full.tokenizer, [{"role": "user", "content": p["prompt"]}])
        sample = {"id": p["id"], "prompt_tokens": len(ids)}
        for side in sides:
            sample[side] = decode(side, full, reduced, ids, args.max_new_tokens)
        diff = first_difference(sample["reduced"]["output_ids"], sample["full"]["output_ids"])
        sample.update(reduced_identical=diff is None, first_divergence=diff)
        if hasattr(os, "getloadavg"):
            sample["load_average_1m"] = os.getloadavg()[0]
        results["samples"].append(sample)
        results["summary"] = summarize(results["samples"], kept, sizes[0]["per_step"], sizes[1]["per_step"])
        atomic_write(out, json.dumps(results, indent=1, default=json_default))
    plot(results, out.with_suffix(".png"))
    return results


def main(argv=None):
    (args,) = cli.parse(argv, (VocabBenchArgs,), __doc__)
    results = run(args)
    print(json.dumps(results["summary"], indent=1, default=json_default)[:3000])


if __name__ == "__main__":
    cli.run(main)
