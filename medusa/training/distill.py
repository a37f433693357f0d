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

    python -m medusa distill --prompts medusa/prompts/smollm2_prompts.jsonl \
        --output data/smollm2_selfdistill.jsonl --max_new_tokens 192 --batch_size 16
"""
import dataclasses
import json
import sys
import time
from dataclasses import field
from pathlib import Path

from medusa.app import loading
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.data.samples import chat_prompt_ids, load_prompts, read_located
from medusa.runtime import locks
from medusa.runtime.errors import Interrupted, UsageError
from medusa.runtime.files import PACKAGE_DIR, naming

DEFAULT_PROMPTS = PACKAGE_DIR / "prompts" / "smollm2_prompts.jsonl"
DEFAULT_OUTPUT = Path("data") / "smollm2_selfdistill.jsonl"


@dataclasses.dataclass
class DistillArgs:
    prompts: str = field(default=str(DEFAULT_PROMPTS), metadata={"help": 'JSONL of {"id", "category", "prompt"}'})
    output: str = field(default=str(DEFAULT_OUTPUT), metadata={"help": "ShareGPT JSONL to append to (resumable)"})
    batch_size: int = field(default=16, metadata={"help": "prompts decoded together"})
    limit: int = field(default=0, metadata={"help": "first N prompts only (0 = all)"})
    system: str = field(default="", metadata={"help": "optional system message in the chat template"})

    def __post_init__(self):
        if self.batch_size < 1 or self.limit < 0:
            raise UsageError("--batch_size must be >= 1 and --limit >= 0")
        if not Path(self.prompts).is_file():
            raise UsageError(f"--prompts {self.prompts}: no such file")
        loading.check_writable(self.output, "--output")


def repair_tail(path) -> int:
    """Cut an unterminated last line (what a killed append leaves) so the next record starts on
    its own line. Returns the bytes removed."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


def done_ids(path):
    """Ids already written to `path` (a partial last line from a crash is ignored)."""
    if not Path(path).is_file():
        return set()
    return {rec["id"] for _, rec in read_located(path, partial_tail="skip") if isinstance(rec, dict) and "id" in rec}


def user_prompt_ids(tok, prompt, system=""):
    """Chat-template token ids of one user prompt (after an optional system message)."""
    system_turn = [{"role": "system", "content": system}] if system else []
    return chat_prompt_ids(tok, system_turn + [{"role": "user", "content": prompt}])


def distill(args: DistillArgs, margs: ModelArgs = None, settings: GenerationSettings = None):
    """Generate the missing replies of `args.prompts` into `args.output` (greedy; every prompt
    is checked against the context before the model loads), holding the output's lock.
    Returns {"replies", "new_tokens", "seconds"} of this run."""
    margs, settings = margs or ModelArgs(), settings or GenerationSettings()
    if not settings.greedy:
        raise UsageError("distillation decodes greedily: drop --temperature")
    out = Path(args.output)
    with locks.hold_file(out, "--output"):        # one writer: a second is refused before the model loads
        return _distill(args, margs, settings, out)


def _distill(args, margs, settings, out):
    """distill() once the output is locked."""
    from tqdm import tqdm

    from medusa.decoding.core import greedy_batch

    plan = loading.plan(margs, settings, heads="none")
    tok = plan.tokenizer
    if cut := repair_tail(out):
        print(f"{out}: removed a partial last line ({cut} bytes) left by an interrupted run", file=sys.stderr)
    seen = done_ids(out)
    todo = [p for p in load_prompts(args.prompts)[:args.limit or None] if p["id"] not in seen]
    encoded = sorted(((user_prompt_ids(tok, p["prompt"], args.system), p) for p in todo), key=lambda x: len(x[0]))
    for ids, p in encoded:
        loading.check_prompt_fits(plan, ids, settings.max_new_tokens, f"{args.prompts}: prompt id {p['id']}")
    model = loading.load(plan).model
    eos_ids, pad_id = set(plan.eos_ids), tok.pad_token_id if tok.pad_token_id is not None else 0
    n_tokens, t0 = 0, time.time()
    bar = tqdm(total=len(encoded), desc="distill", unit="prompt")
    written = 0
    try:
        with naming(out), open(out, "a", encoding="utf-8") as f:
            for i in range(0, len(encoded), args.batch_size):
                chunk = encoded[i:i + args.batch_size]
                replies = greedy_batch(model, [ids for ids, _ in chunk], settings.max_new_tokens, eos_ids, pad_id)
                lines = "".join(json.dumps(sharegpt_record(p, tok.decode(reply, skip_special_tokens=True)),
                                           ensure_ascii=False) + "\n" for (_, p), reply in zip(chunk, replies))
                f.write(lines)        # one write per batch; a kill mid-write leaves a tail repair_tail cuts
                f.flush()
                written += len(chunk)
                n_tokens += sum(len(r) for r in replies)
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{n_tokens / max(time.time() - t0, 1e-9):.1f}")
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(f"interrupted: {written} new replies were saved in {out} ({len(seen) + written} in all); "
                          "run the same command again to continue") from None
    bar.close()
    return {"replies": len(todo), "new_tokens": n_tokens, "seconds": round(time.time() - t0, 1)}


def sharegpt_record(prompt, reply):
    return {"id": prompt["id"], "category": prompt["category"],
            "conversations": [{"from": "human", "value": prompt["prompt"]}, {"from": "gpt", "value": reply}]}
