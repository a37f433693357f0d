"""Self-distillation on a machine without a tokenizer (the GPU image, see docs/gpu.md): token
ids in, token ids out, text made here.

    python scripts/distill_ids.py encode --prompts P.jsonl --output ids.jsonl          # here: chat template
    python scripts/distill_ids.py decode --model M.gguf --ids ids.jsonl --output replies.jsonl \
        --max_new_tokens 192 --batch_size 480 --dtype float32 [--temperature 0.7 --seed 1]  # on the GPU
    python scripts/distill_ids.py text --prompts P.jsonl --replies replies.jsonl --output distill.jsonl
    python scripts/distill_ids.py samples --prompt_ids ids.jsonl --replies R1.jsonl [R2.jsonl ...] \
        --end_id 2 --output samples.npz                                               # anywhere

`decode` is medusa.decoding.core.greedy_batch over length-sorted batches (as medusa.training.distill), appending one
{"id", "reply_ids", "temperature", "max_new_tokens"} line per prompt after each batch and skipping
ids already in --output, so a cut-off run resumes; --temperature > 0 samples (Gumbel-max on the
device, seeded by --seed) instead of greedy. `samples` turns prompt ids + reply ids into the token
samples the trainer reads without a tokenizer (medusa.data.samples.save_token_samples: prompt, reply and
the end-of-turn token when the reply was not cut; grouped by prompt id for the train/val split). `text` writes the ShareGPT records medusa.training.distill writes. The model is read
with medusa.model.weights (a .gguf needs only the `gguf` package; no transformers).
"""
import argparse
import json
import time
from pathlib import Path

from medusa.runtime.errors import UsageError


def encode(args):
    from medusa.app import loading
    from medusa.app.settings import ModelArgs
    from medusa.data.samples import load_prompts
    from medusa.training import distill

    plan = loading.plan(ModelArgs(base_model_path=args.base_model_path, device="cpu"), heads="none")
    with open(args.output, "w", encoding="utf-8") as f:
        for p in load_prompts(args.prompts):
            ids = distill.user_prompt_ids(plan.tokenizer, p["prompt"])
            f.write(json.dumps({"id": p["id"], "prompt_ids": ids}) + "\n")
    print(json.dumps({"eos_ids": list(plan.eos_ids), "pad_id": plan.tokenizer.pad_token_id}))


def decode(args):
    from tqdm import tqdm

    from medusa.data.samples import read_located
    from medusa.decoding import core
    from medusa.model import weights
    from medusa.runtime.backend import jt, use_device

    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    records = [r for _, r in read_located(args.ids)]          # checked before the model loads
    if not 0 <= args.pick <= len(records):
        raise UsageError(f"--pick {args.pick}: must be in [0, {len(records)}] (the prompts in {args.ids}; 0 = all)")
    if args.pick:   # a seeded share of the prompts (the sampled replies of the 12k set)
        import numpy as np

        chosen = set(np.random.default_rng(args.seed).choice(len(records), args.pick, replace=False).tolist())
        records = [r for i, r in enumerate(records) if i in chosen]
    device = use_device(args.device)
    jt.set_global_seed(args.seed)
    model = weights.load_model(args.model, args.dtype)
    eos = set(int(e) for e in args.eos_ids.split(","))
    out = Path(args.output)
    done = {r["id"] for _, r in read_located(out, partial_tail="skip")} if out.is_file() else set()
    todo = sorted((r for r in records if r["id"] not in done), key=lambda r: len(r["prompt_ids"]))
    tokens, start = 0, time.time()
    with open(out, "a", encoding="utf-8") as f:
        for i in tqdm(range(0, len(todo), args.batch_size), desc=f"distill ({device})"):
            chunk = todo[i:i + args.batch_size]
            replies = core.greedy_batch(model, [r["prompt_ids"] for r in chunk], args.max_new_tokens, eos, args.pad_id,
                                        temperature=args.temperature)
            f.write("".join(json.dumps({"id": r["id"], "reply_ids": reply, "temperature": args.temperature,
                                        "max_new_tokens": args.max_new_tokens}) + "\n"
                            for r, reply in zip(chunk, replies)))
            f.flush()
            tokens += sum(len(r) for r in replies)
    seconds = time.time() - start
    print(json.dumps({"device": device, "temperature": args.temperature, "prompts": len(todo), "reply_tokens": tokens, "seconds": round(seconds, 1),
                      "tokens_per_second": round(tokens / max(seconds, 1e-9), 1)}))


def text(args):
    from medusa.app import loading
    from medusa.app.settings import ModelArgs
    from medusa.data.samples import load_prompts, read_located
    from medusa.training import distill

    tok = loading.plan(ModelArgs(base_model_path=args.base_model_path, device="cpu"), heads="none").tokenizer
    prompts = {p["id"]: p for p in load_prompts(args.prompts)}
    with open(args.output, "w", encoding="utf-8") as f:
        for _, r in sorted(read_located(args.replies), key=lambda x: x[1]["id"]):
            reply = tok.decode(r["reply_ids"], skip_special_tokens=True)
            record = distill.sharegpt_record(prompts[r["id"]], reply)
            if r.get("temperature"):      # sampled replies stay marked
                record["temperature"] = r["temperature"]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def samples(args):
    from medusa.data.samples import read_located, reply_sample, save_token_samples

    prompts = {r["id"]: r["prompt_ids"] for _, r in read_located(args.prompt_ids)}
    out, groups, temps = [], [], []
    for path in args.replies:
        for where, r in read_located(path):
            if r["id"] not in prompts:
                raise UsageError(f"{path}: {where}: prompt id {r['id']} is not in {args.prompt_ids}: give the "
                                 "--prompt_ids file these replies were decoded from")
            cap = r.get("max_new_tokens", args.max_new_tokens)
            out.append(reply_sample(prompts[r["id"]], r["reply_ids"], args.end_id, cap))
            groups.append(r["id"])
            temps.append(r.get("temperature", 0.0))
    meta = {"pad_id": args.pad_id, "end_id": args.end_id, "prompt_ids": Path(args.prompt_ids).name,
            "replies": [Path(p).name for p in args.replies]}
    save_token_samples(args.output, out, groups, temps, meta)
    print(json.dumps({"samples": len(out), "tokens": int(sum(len(s) for s in out)),
                      "loss_tokens": int(sum(int(s.loss_mask.sum()) for s in out)),
                      "sampled": sum(1 for t in temps if t > 0), "output": args.output}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--prompts", required=True)
    e.add_argument("--output", required=True)
    e.add_argument("--base_model_path", default="")
    d = sub.add_parser("decode")
    d.add_argument("--model", required=True)
    d.add_argument("--ids", required=True)
    d.add_argument("--output", required=True)
    d.add_argument("--eos_ids", required=True, help="comma-separated (encode prints them)")
    d.add_argument("--pad_id", type=int, default=0)
    d.add_argument("--max_new_tokens", type=int, default=192)
    d.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    d.add_argument("--seed", type=int, default=0, help="seeds the sampling and --pick")
    d.add_argument("--pick", type=int, default=0, help="decode only this many prompts, picked at random (0 = all)")
    d.add_argument("--batch_size", type=int, default=256)
    d.add_argument("--dtype", default="float32")
    d.add_argument("--device", default="auto")
    t = sub.add_parser("text")
    t.add_argument("--prompts", required=True)
    t.add_argument("--replies", required=True)
    t.add_argument("--output", required=True)
    t.add_argument("--base_model_path", default="")
    s = sub.add_parser("samples")
    s.add_argument("--prompt_ids", required=True, help="what encode wrote")
    s.add_argument("--replies", required=True, nargs="+", help="what decode wrote (one or more files)")
    s.add_argument("--output", required=True, help=".npz of token samples")
    s.add_argument("--end_id", type=int, required=True, help="the end-of-turn token closing a reply")
    s.add_argument("--pad_id", type=int, default=0)
    s.add_argument("--max_new_tokens", type=int, default=192, help="cap of replies that do not record theirs")
    args = p.parse_args(argv)
    {"encode": encode, "decode": decode, "text": text, "samples": samples}[args.cmd](args)


if __name__ == "__main__":
    from medusa import cli

    cli.run(main)
