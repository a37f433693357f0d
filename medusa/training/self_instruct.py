"""Self-instruct prompts: the base model writes new user requests from a few seed requests.

    python -m medusa self-instruct --output prompts_si.jsonl --num 12000 --seed 0 \
        [--seeds medusa/prompts/seed_instructions.jsonl] [--prompt_ids_output prompt_ids_si.jsonl] \
        [--model M.gguf|M.pkl|HF_DIR --tokenizer DIR] [--device cuda]

Why: the templated prompts of medusa.data.prompt_gen are narrower than what people type, and heads
trained on their replies accept fewer tokens on natural prompts (results/HISTORY.md). Here
the model itself writes the prompts (Self-Instruct, Wang et al. 2023), so the requests read like
the seeds, hand-written in medusa/prompts/seed_instructions.jsonl (132, 12 in each of 11
categories; none from MT-bench, Vicuna-bench, the benchmark's or the tuning prompts).

Each candidate is a plain-text list (no chat template)

    Here is a list of requests that people sent to a helpful AI assistant. ...
    Request: <seed>            x `shots`, drawn from one category, seeded
    Request:

that the model continues, sampled at --temperature, up to the end of the line. A candidate is kept
when it ends its line within --max_new_tokens, has 3-80 words, starts with a letter or digit,
is not a copy or near-copy (Jaccard >= --near on word trigrams) of a seed, of a kept prompt or
of a prompt in --exclude (by default the benchmark's and the tuner's prompts: evaluation sets stay
out of training), and names no "Request:" of its own. Its category is its seeds' category; the
categories take turns.

Output: JSONL of {"id", "category", "prompt", "source": "self_instruct", "round"}, ids from
--first_id; with --prompt_ids_output also {"id", "prompt_ids"} (the chat template's ids, what
scripts/distill_ids.py decode reads). Rounds of --batch_size candidates are seeded by (seed,
round) and written as each ends; rerun the same command to continue a cut-off run (the settings
must match: they are recorded in every record's "round" and checked).
"""
import contextlib
import itertools
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from medusa.app import loading
from medusa.data.samples import DataError, load_prompts, read_located
from medusa.model import weights
from medusa.model.tokenizer import ChatTokenizer
from medusa.model.weights import content_id
from medusa.runtime.errors import UsageError
from medusa.runtime.files import PACKAGE_DIR
from medusa.training import distill
from medusa.training.distill import repair_tail

PROMPTS_DIR = PACKAGE_DIR / "prompts"
DEFAULT_SEEDS = PROMPTS_DIR / "seed_instructions.jsonl"
DEFAULT_EXCLUDE = (PROMPTS_DIR / "bench_prompts.jsonl", PROMPTS_DIR / "smollm2_prompts.jsonl")
FRAME = ("Here is a list of requests that people sent to a helpful AI assistant. Each request is one "
         "line, clear and complete, and asks for something different.\n\n")
LINE = "Request:"


# ---------------------------------------------------------------- text only (tested without a model)
def load_seeds(path):
    """{category: [prompt, ...]} of a JSONL of {"category", "prompt"}; one-line prompts only."""
    seeds = defaultdict(list)
    for where, r in read_located(path):
        if not isinstance(r, dict) or not isinstance(r.get("category"), str) or not isinstance(r.get("prompt"), str):
            raise DataError(f"{path}: {where}: expected {{\"category\": str, \"prompt\": str}}")
        if "\n" in r["prompt"] or not r["prompt"].strip():
            raise DataError(f"{path}: {where}: a seed is one non-empty line")
        seeds[r["category"]].append(r["prompt"].strip())
    if not seeds:
        raise DataError(f"{path}: no seeds")
    return dict(seeds)


def frame(shots):
    """The few-shot text the model continues."""
    return FRAME + "".join(f"{LINE} {s}\n" for s in shots) + LINE


def normalized(text):
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def trigrams(text):
    words = normalized(text).split()
    return frozenset(zip(words, words[1:], words[2:])) if len(words) >= 3 else frozenset([tuple(words)])


class NearDuplicates:
    """Word-trigram sets with an inverted index: is a text within Jaccard `near` of one added?"""

    def __init__(self, near):
        self.near = near
        self.sets = []
        self.index = defaultdict(list)
        self.exact = set()

    def add(self, text):
        grams = trigrams(text)
        self.exact.add(normalized(text))
        for g in grams:
            self.index[g].append(len(self.sets))
        self.sets.append(grams)

    def close(self, text) -> bool:
        if normalized(text) in self.exact:
            return True
        grams = trigrams(text)
        shared = defaultdict(int)
        for g in grams:
            for i in self.index.get(g, ()):
                shared[i] += 1
        return any(n / (len(grams) + len(self.sets[i]) - n) >= self.near for i, n in shared.items())


def clean(completion):
    """The request in a completion (the text after "Request:" up to its newline), or None when it
    is not one: cut off, empty, too short or long, or not starting like a sentence."""
    if "\n" not in completion:
        return None                       # ran out of tokens before the line ended
    text = completion.split("\n", 1)[0].strip()
    words = text.split()
    if not 3 <= len(words) <= 80 or LINE.lower() in text.lower():
        return None
    if not text[0].isalnum() or not text.isprintable():
        return None
    return text


# ---------------------------------------------------------------- the run
def settings_key(args, seeds_path):
    """What a resumed run must share with the records already written."""
    return {"seed": args.seed, "temperature": args.temperature, "shots": args.shots, "near": args.near,
            "batch_size": args.batch_size, "seeds": content_id(seeds_path)}


def read_done(path, key):
    """(records, last round) already in `path`; the records must have been made with `key`."""
    if not Path(path).is_file():
        return [], -1
    records = [r for _, r in read_located(path, partial_tail="skip")]
    for r in records:
        if r.get("round", {}).get("settings") != key:
            raise UsageError(f"--output {path} holds prompts made with other settings ({r.get('round')}); "
                             "choose another --output or the same settings")
    return records, max((r["round"]["n"] for r in records), default=-1)


def stop_ids(tok):
    """Every token whose text holds a newline: a request ends with the first one."""
    return {i for i in range(len(tok)) if "\n" in tok.decode([i])}


def load(args):
    """(model, tokenizer, eos ids) of --model / --tokenizer (the embedded default when empty)."""
    from medusa.runtime.backend import use_device

    use_device(args.device)
    src, tok_dir = (args.model, args.tokenizer or args.model) if args.model else weights.resolve_model(dtype=args.dtype)
    tok = ChatTokenizer.from_folder(tok_dir)
    model = weights.load_model(src, args.dtype)
    return model, tok, loading.eos_ids_of(model.config, tok)


def run(args):
    from tqdm import tqdm

    from medusa.decoding.core import greedy_batch
    from medusa.runtime.backend import jt

    seeds = load_seeds(args.seeds)
    cats = sorted(seeds)
    out = Path(args.output)
    ids_out = Path(args.prompt_ids_output) if args.prompt_ids_output else None
    key = settings_key(args, args.seeds)
    for path, flag in ((out, "--output"), (ids_out, "--prompt_ids_output")):
        if path is not None:
            loading.check_writable(path, flag)
            repair_tail(path)
    done, last_round = read_done(out, key)
    seen = NearDuplicates(args.near)       # what a new prompt may not copy: seeds, excluded sets, kept prompts
    for text in itertools.chain((s for cat in cats for s in seeds[cat]),
                                (p["prompt"] for path in args.exclude for p in load_prompts(path)),
                                (r["prompt"] for r in done)):
        seen.add(text)
    if len(done) >= args.num:
        print(f"{out} already holds {len(done)} prompts (asked {args.num})", file=sys.stderr)
        return {"prompts": len(done), "new": 0, "candidates": 0, "seconds": 0.0}

    model, tok, eos_ids = load(args)
    stops = stop_ids(tok) | set(eos_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    next_id = args.first_id + len(done)
    made = candidates = 0
    t0 = time.time()
    bar = tqdm(total=args.num, initial=len(done), desc="self-instruct", unit="prompt")
    rnd = last_round
    with contextlib.ExitStack() as files:
        f = files.enter_context(open(out, "a", encoding="utf-8"))
        g = files.enter_context(open(ids_out, "a", encoding="utf-8")) if ids_out else None
        while len(done) + made < args.num:
            rnd += 1
            if rnd - last_round > args.max_rounds:
                raise UsageError(f"{args.max_rounds} rounds kept only {made} new prompts: lower --num or --near")
            rng = np.random.default_rng([args.seed, rnd])
            batch = []
            for j in range(args.batch_size):
                cat = cats[(rnd * args.batch_size + j) % len(cats)]
                pool = seeds[cat]
                shots = [pool[i] for i in rng.choice(len(pool), min(args.shots, len(pool)), replace=False)]
                batch.append((cat, tok.encode(frame(shots))))
            jt.set_global_seed(args.seed * 100003 + rnd)
            replies = greedy_batch(model, [ids for _, ids in batch], args.max_new_tokens, stops, pad,
                                   temperature=args.temperature)
            candidates += len(batch)
            kept = []
            for (cat, _), reply in zip(batch, replies):
                # an id in `stops` ended the reply (and is not in it): add the newline back
                ended = len(reply) < args.max_new_tokens
                text = clean(tok.decode(reply, skip_special_tokens=True) + ("\n" if ended else ""))
                if text is None or seen.close(text):
                    continue
                seen.add(text)
                kept.append({"id": next_id + len(kept), "category": cat, "prompt": text, "source": "self_instruct",
                             "round": {"n": rnd, "settings": key}})
                if len(done) + made + len(kept) >= args.num:
                    break
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
            f.flush()
            if g is not None:
                g.write("".join(json.dumps({"id": r["id"], "prompt_ids": distill.user_prompt_ids(tok, r["prompt"])})
                                + "\n" for r in kept))
                g.flush()
            next_id += len(kept)
            made += len(kept)
            bar.update(len(kept))
            bar.set_postfix(kept=f"{made / max(candidates, 1):.0%}")
    bar.close()
    return {"prompts": len(done) + made, "new": made, "candidates": candidates, "seconds": round(time.time() - t0, 1)}
