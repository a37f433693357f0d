"""Tune the Medusa tree for given heads on this machine: `python -m medusa tune`.

1. Ground truth: the base model's greedy continuation of each prompt (what greedy Medusa must
   reproduce).
2. Head accuracy: one forward over prompt + continuation, the heads on every continuation
   position; `acc[k, i]` = share of positions where the true token t+k+2 is exactly head k's
   i-th candidate. Sequential (rnn) heads read the true tokens, which is what they see
   whenever the path before them was accepted.
3. Growth: a node's value is the product of acc[d, path[d]] along its path, the chance that it
   is accepted if the heads erred independently. Nodes are added best value first (a child
   never beats its parent, so every prefix of the order is a valid tree); a tree of n nodes
   expects 1 + (sum of their values) tokens per step (the root token is always kept).
4. Cost: for a few candidate sizes, time one real decoding step (heads proposing the tree,
   then the base model verifying it on a KV cache of prompt length), after an untimed warm-up.
   The size with the highest expected tokens per second wins.
5. Check: Medusa with the chosen tree on the same prompts; the report sets the measured
   accepted length (tokens per step) beside the expected one.

Writes the tree (a JSON list of paths, for --medusa_choices) and `<tree>_report.json` beside it;
by default beside the heads as `<heads>_tree_<device>.json`, the file `--medusa_choices auto`
(the default of every command) picks for these heads on this kind of device.
Reference: FasterDecoding/Medusa, medusa/model/medusa_choices.py and the paper's section 3.3.2
(trees from per-head top-k accuracies).
"""
import dataclasses
import heapq
import json
import time
from dataclasses import field
from pathlib import Path

import numpy as np

from medusa.app import loading
from medusa.app.results import dumps_compact
from medusa.app.settings import GenerationSettings
from medusa.data import samples as data
from medusa.data.prompt_sets import DATA_FORMATS, load_prompt_set, spread_over_categories
from medusa.decoding.sampling import Sampling
from medusa.decoding.tree import MAX_NODES, PRESETS, load_choices
from medusa.runtime import options
from medusa.runtime.errors import UsageError
from medusa.runtime.files import PACKAGE_DIR

TUNE_PROMPTS = PACKAGE_DIR / "prompts" / "smollm2_prompts.jsonl"   # not the benchmark's (the first heads' training prompts)


@dataclasses.dataclass
class TuneArgs:
    data_path: str = field(default=str(TUNE_PROMPTS), metadata={
        "help": "prompts to tune on (not the benchmark's: no tuning on the test set)"})
    data_format: str = field(default="auto", metadata={"help": "format of --data_path", "choices": DATA_FORMATS})
    num_prompts: int = field(default=10, metadata={"help": "prompts whose greedy continuation is the ground truth"})
    max_rank: int = field(default=10, metadata={"help": "candidates per head considered (top-max_rank)"})
    sizes: str = field(default="1,2,4,6,8,12,16,24,32,48,64", metadata={"help": "comma-separated node counts to time"})
    repeats: int = field(default=5, metadata={"help": "timed steps per size (median kept)"})
    verify_prompts: int = field(default=5, metadata={"help": "prompts decoded with the chosen tree (0 = no check)"})
    output: str = field(default="", metadata={"help": "tree JSON to write (default: beside the heads, "
                                                      "<heads>_tree_<device>.json, which --medusa_choices auto uses)"})

    def __post_init__(self):
        try:
            sizes = [int(x) for x in self.sizes.split(",")]
        except ValueError:
            raise UsageError(f"--sizes {self.sizes!r}: expected comma-separated integers like 1,4,8") from None
        if not sizes or min(sizes) < 1 or max(sizes) > MAX_NODES:
            raise UsageError(f"--sizes {self.sizes!r}: node counts must be in 1..{MAX_NODES}")
        if min(self.num_prompts, self.max_rank, self.repeats) < 1 or self.verify_prompts < 0:
            raise UsageError("--num_prompts, --max_rank and --repeats must be >= 1, --verify_prompts >= 0")
        if not Path(self.data_path).is_file():
            raise UsageError(f"--data_path {self.data_path}: no such file")
        if self.output:
            loading.check_writable(self.output, "--output")

    @property
    def size_list(self):
        return sorted({int(x) for x in self.sizes.split(",")})


# ---------------------------------------------------------------- accuracy
def head_ranks(model, heads, ids, start):
    """Ranks [K, n] of the true tokens among each head's logits at positions start-1 .. T-2
    (n = T - start); -1 where the target t+k+2 lies past the end."""
    from medusa.decoding.core import hidden_states
    from medusa.runtime.backend import jt

    ids = np.asarray(ids, np.int32)
    T, K = len(ids), heads.config.num_heads
    hidden = hidden_states(model, ids[None])
    with jt.no_grad():
        positions = np.arange(start - 1, T - 1)                      # the base predicts t+1 there
        drafted = data.drafted_tokens(ids[None], np.zeros_like(positions), positions, K)   # [n, K]: t+k+1
        drafted = np.maximum(model.vocab.embedding_rows(drafted), 0).astype(np.int32)
        states = hidden[:, start - 1:T - 1]
        if heads.prefix is not None:                                 # it reads the context from position 0
            states = heads.prefix(hidden[:, :T - 1].float32())[0][:, start - 1:]
        logits, _ = heads(states, jt.array(drafted[None]), model.lm_head_t(), model.embed_weight(), prefixed=True)
        logits = logits[:, 0].numpy()                                # [K, n, V]
    truth = model.vocab.rows(ids)                                    # logit rows; -1 outside a reduced vocabulary
    ranks = np.full((K, len(positions)), -1, np.int64)
    for k in range(K):
        rows = np.flatnonzero((positions + k + 2 < T) & (truth[np.minimum(positions + k + 2, T - 1)] >= 0))
        true = logits[k, rows, truth[positions[rows] + k + 2]]
        ranks[k, rows] = (logits[k, rows] > true[:, None]).sum(-1)
    return ranks


def accuracy_table(ranks, max_rank):
    """acc [K, max_rank]: acc[k, i] = share of valid positions where head k ranks the truth i."""
    ranks = np.concatenate(ranks, axis=1)
    acc = np.zeros((ranks.shape[0], max_rank))
    for k, row in enumerate(ranks):
        row = row[row >= 0]
        acc[k] = np.bincount(row[row < max_rank], minlength=max_rank)[:max_rank] / max(len(row), 1)
    return acc


# ---------------------------------------------------------------- growth
def grow_tree(acc, max_nodes):
    """(paths in the order added, their values) growing greedily by value = prod acc[d, path[d]]."""
    depth, ranks = acc.shape
    heap = [(-acc[0, i], (i,)) for i in range(ranks)]
    heapq.heapify(heap)
    paths, values = [], []
    while heap and len(paths) < max_nodes:
        neg, path = heapq.heappop(heap)
        if -neg <= 0:
            break                     # nothing left that is ever accepted
        paths.append(list(path))
        values.append(-neg)
        if len(path) < depth:
            for i in range(ranks):
                heapq.heappush(heap, (neg * acc[len(path), i], path + (i,)))
    return paths, values


def expected_accept(choices, acc):
    """Expected tokens per step of any tree under the same independence model."""
    total = 1.0
    for path in choices:
        if len(path) <= acc.shape[0] and max(path) < acc.shape[1]:
            total += float(np.prod([acc[d, i] for d, i in enumerate(path)]))
    return total


# ---------------------------------------------------------------- cost
def step_time(model, heads, choices, context_ids, repeats):
    """Median seconds of one decoding step (propose + verify) with this tree, context cached."""
    from medusa.decoding.core import new_cache
    from medusa.decoding.steps import prefill, propose, tree_decode
    from medusa.decoding.tree_vars import resolve_tree

    tree = resolve_tree(choices, heads.config.num_heads)
    cache = new_cache(model, 1, len(context_ids) + tree.num_nodes)
    sampling = Sampling()
    hidden, root = prefill(model, cache, context_ids, sampling, None)
    hidden_last = heads.read_prefix(heads.prefix_state(), hidden)
    past, seconds = cache.length, []
    for _ in range(repeats + 1):       # the first step compiles this tree's kernels: untimed
        start = time.perf_counter()
        tokens = propose(model, heads, tree, hidden_last, root)
        tree_decode(model, cache, tree, tokens, sampling)
        seconds.append(time.perf_counter() - start)
        cache.compact(past, [])        # drop the tree again
    return float(np.median(seconds[1:]))


# ---------------------------------------------------------------- the whole tuning
def tune(args: TuneArgs, settings: GenerationSettings, setup, log=print):
    """Run steps 1-5 with the loaded heads and base of `setup` (loading.load); returns the report
    dict (the tree is report["tree"])."""
    prompts = spread_over_categories(load_prompt_set(args.data_path, args.data_format), args.num_prompts)
    prompt_ids = [data.chat_prompt_ids(setup.tokenizer, [{"role": "user", "content": p.turns[0]}]) for p in prompts]
    acc, context = measure_accuracy(setup, prompt_ids, settings.max_new_tokens, args.max_rank, log)
    order, values = grow_tree(acc, max(args.size_list))
    base_step = step_time_base(setup.model, context, args.repeats)
    candidates = time_sizes(setup, order, values, context, base_step, args, log)
    best = max(candidates, key=lambda c: c["expected_tokens_per_second"])
    tree = order[:best["nodes"]]
    if args.verify_prompts:
        best["measured_accept"] = measured_accept(setup, tree, prompt_ids[:args.verify_prompts], settings.max_new_tokens)
        log(f"chosen {best['nodes']} nodes: expected {best['expected_accept']:.2f} vs measured "
            f"{best['measured_accept']:.2f} tokens/step")
    resolved = {k: v for k, v in setup.plan.resolved().items() if k != "tree"}
    resolved["head_config"] = setup.heads.config.to_dict()
    return {"config": {**dataclasses.asdict(args), **dataclasses.asdict(settings)}, "resolved": resolved,
            "accuracy": acc.tolist(), "base_step_seconds": base_step, "candidates": candidates, "chosen": best,
            "tree": tree, "expected_accept_of_presets": _preset_expectations(acc, setup.heads.config.num_heads)}


def measure_accuracy(setup, prompt_ids, max_new_tokens, max_rank, log):
    """Steps 1-2: (acc [K, max_rank], a context for timing: the first prompt + half its reply)."""
    from medusa.decoding.core import generate

    ranks, replies = [], []
    for ids in prompt_ids:
        replies.append(generate(setup.model, ids, max_new_tokens, setup.eos_ids).output_ids)
        ranks.append(head_ranks(setup.model, setup.heads, ids + replies[-1], len(ids)))
    acc = accuracy_table(ranks, max_rank)
    log("head accuracy (top-1, top-max_rank): " + ", ".join(
        f"head {k}: {a[0]:.3f}/{a.sum():.3f}" for k, a in enumerate(acc)))
    return acc, prompt_ids[0] + replies[0][:len(replies[0]) // 2]


def time_sizes(setup, order, values, context, base_step, args, log):
    """Step 4: expected tokens/s of the first n grown nodes, for each size n of args.sizes."""
    candidates = []
    for n in [s for s in args.size_list if s <= len(order)]:
        seconds = step_time(setup.model, setup.heads, order[:n], context, args.repeats)
        expected = 1.0 + sum(values[:n])
        candidates.append({"nodes": n, "expected_accept": expected, "step_seconds": seconds,
                           "expected_tokens_per_second": expected / seconds})
        log(f"{n:3d} nodes: expected {expected:.2f} tokens/step, {seconds * 1e3:.1f} ms/step, "
            f"{expected / seconds:.1f} tokens/s (base {1 / base_step:.1f})")
    return candidates


def measured_accept(setup, tree, prompt_ids, max_new_tokens):
    """Step 5: tokens per decoding step of greedy Medusa with `tree` on these prompts."""
    from medusa.decoding.loop import medusa_generate

    tokens = steps = 0
    for ids in prompt_ids:
        result = medusa_generate(setup.model, setup.heads, ids, max_new_tokens, choices=tree, eos_ids=setup.eos_ids)
        tokens, steps = tokens + sum(result.accept_lengths), steps + result.steps
    return tokens / max(steps, 1)


def step_time_base(model, context_ids, repeats):
    """Median seconds of one plain decoding step at this context length (for reference)."""
    from medusa.decoding.core import stream_tokens

    times = [s for _, s in stream_tokens(model, context_ids, repeats + 2)][2:]   # skip prefill + warm-up
    return float(np.median(times))


def _preset_expectations(acc, num_heads):
    out = {}
    for name in PRESETS:
        try:
            out[name] = expected_accept(load_choices(name, num_heads), acc)
        except ValueError:
            pass                       # deeper than these heads
    return out


def write_tree(report, path):
    """The tree as a plain JSON list of paths (tree.load_choices reads it), report beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report["tree"]) + "\n")
    report_path = path.with_name(path.stem + "_report.json")
    report_path.write_text(dumps_compact({**report, "options": options.as_dict()}) + "\n")
    return path, report_path
