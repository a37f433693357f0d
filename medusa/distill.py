"""Self-distillation data: the base model's own greedy replies, in ShareGPT format.

Medusa heads learn to predict what the base model will say next, so the best training text is
the base model's own output (Medusa paper, section 3.3 "self-distillation"). Prompts are rendered
with the tokenizer's chat template and decoded greedily with the KV cache, several at a time:
a batch is left-padded to its longest prompt, every sample gets its own positions (0 at its first
real token) and the padding mask hides the pad keys, so each row computes what it would alone
(tests/test_distill.py checks batched == one at a time). Prompts are sorted by length first so
that little padding is needed. Each reply is appended as one JSONL line

    {"id": 3, "category": "math", "conversations": [{"from": "human", "value": prompt},
                                                     {"from": "gpt", "value": reply}]}

as soon as its batch is done; a rerun skips the ids already in the file (resumable).

    python -m medusa.distill --prompts medusa/prompts/smollm2_prompts.jsonl \
        --output data/smollm2_selfdistill.jsonl --max_new_tokens 192 --batch_size 16
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "smollm2_prompts.jsonl"
DEFAULT_OUTPUT = Path("data") / "smollm2_selfdistill.jsonl"


@dataclasses.dataclass
class DistillArgs:
    prompts: str = str(DEFAULT_PROMPTS)
    output: str = str(DEFAULT_OUTPUT)
    base_model_path: str = ""          # HF folder / .gguf / .pkl; "" = the embedded default
    max_new_tokens: int = 192
    batch_size: int = 16               # prompts decoded together
    limit: int = 0                     # first N prompts only (0 = all)
    system: str = ""                   # optional system message in the chat template
    device: str = "auto"               # auto | cpu | cuda
    dtype: str = ""                    # compute dtype; "" = fp16 on GPU, fp32 on CPU


def left_pad(prompts, pad_id):
    """[B] lists of ids -> (tokens [B, P], positions [B, P], padding [B, P]) int32 arrays,
    left-padded; positions count from each sample's first real token (pads get 0)."""
    P = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    padding = np.zeros((len(prompts), P), np.int32)
    for b, p in enumerate(prompts):
        tokens[b, P - len(p):] = p
        padding[b, P - len(p):] = 1
    positions = np.maximum(np.cumsum(padding, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, padding


def greedy_batch(model, prompts, max_new_tokens, eos_ids, pad_id=0):
    """Greedy continuations of several prompts (lists of ids) -> [B] lists of new ids, each
    without its eos. Decoding stops when every row has met an eos or max_new_tokens."""
    from medusa.kvcache import KVCache
    from medusa.model import build_mask
    from medusa.runtime import jt

    tokens, positions, padding = left_pad(prompts, pad_id)
    B, P = tokens.shape
    cache = KVCache(model.config, B, P + max_new_tokens, model.dtype)
    keys = np.concatenate([padding, np.ones((B, max_new_tokens), np.int32)], axis=1)  # [B, S] 1 = real
    next_pos = positions[:, -1] + 1                                                       # [B]
    out, done = [[] for _ in range(B)], np.zeros(B, bool)
    with jt.no_grad():
        hidden = model(jt.array(tokens), jt.array(positions), build_mask(B, P, 0, padding), cache)
        for step in range(max_new_tokens):
            nxt = model.logits(hidden[:, -1:]).argmax(-1)[0].numpy().reshape(B)
            for b in np.flatnonzero(~done):
                if int(nxt[b]) in eos_ids:
                    done[b] = True
                else:
                    out[b].append(int(nxt[b]))
            if done.all() or step + 1 == max_new_tokens:
                break
            S = cache.length + 1
            mask = build_mask(B, 1, cache.length, keys[:, :S])
            hidden = model(jt.array(nxt.astype(np.int32)[:, None]), jt.array((next_pos + step)[:, None]),
                           mask, cache)
    return out


def done_ids(path):
    """Ids already written to `path` (a partial last line from a crash is ignored)."""
    ids = set()
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return ids


def user_prompt_ids(tok, prompt, system=""):
    """Chat-template token ids of one user prompt (after an optional system message)."""
    from medusa.data import chat_prompt_ids

    system_turn = [{"role": "system", "content": system}] if system else []
    return chat_prompt_ids(tok, system_turn + [{"role": "user", "content": prompt}])


def distill(args: DistillArgs):
    """Generate the missing replies of `args.prompts` into `args.output`.
    Returns {"replies", "new_tokens", "seconds"} of this run."""
    from tqdm import tqdm
    from medusa import weights
    from medusa.data import load_prompts
    from medusa.generate import eos_ids_of
    from medusa.runtime import use_device

    use_device(args.device)
    src = args.base_model_path or weights.ensure_default_model("float32")
    model = weights.load_model(src, args.dtype or None)
    tok = weights.load_tokenizer(src)
    eos_ids = set(eos_ids_of(model, tok))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen = done_ids(out)
    todo = [p for p in load_prompts(args.prompts)[:args.limit or None] if p["id"] not in seen]
    encoded = sorted(((user_prompt_ids(tok, p["prompt"], args.system), p) for p in todo), key=lambda x: len(x[0]))
    n_tokens, t0 = 0, time.time()
    bar = tqdm(total=len(encoded), desc="distill", unit="prompt")
    with open(out, "a", encoding="utf-8") as f:
        for i in range(0, len(encoded), args.batch_size):
            chunk = encoded[i:i + args.batch_size]
            replies = greedy_batch(model, [ids for ids, _ in chunk], args.max_new_tokens, eos_ids, pad_id)
            for (_, p), reply in zip(chunk, replies):
                n_tokens += len(reply)
                f.write(json.dumps(sharegpt_record(p, tok.decode(reply, skip_special_tokens=True)),
                                   ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{n_tokens / max(time.time() - t0, 1e-9):.1f}")
    bar.close()
    return {"replies": len(todo), "new_tokens": n_tokens, "seconds": round(time.time() - t0, 1)}


def sharegpt_record(prompt, reply):
    return {"id": prompt["id"], "category": prompt["category"],
            "conversations": [{"from": "human", "value": prompt["prompt"]}, {"from": "gpt", "value": reply}]}


def parse_args(argv=None) -> DistillArgs:
    defaults = DistillArgs()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(DistillArgs):
        p.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    return DistillArgs(**vars(p.parse_args(argv)))


def main(argv=None):
    args = parse_args(argv)
    stats = distill(args)
    print(f"wrote {stats['replies']} replies ({stats['new_tokens']} tokens, {stats['seconds']} s) to {args.output}")


if __name__ == "__main__":
    main()
