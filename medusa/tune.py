"""Tune the Medusa tree for given heads on this machine: `python -m medusa.tune`.

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

Writes the tree (a JSON list of paths, for --medusa_choices) and `<tree>_report.json` beside it.
Reference: FasterDecoding/Medusa, medusa/model/medusa_choices.py and the paper's section 3.3.2
(trees from per-head top-k accuracies).
"""
import argparse
import dataclasses
import heapq
import json
import time
from pathlib import Path

import numpy as np

from medusa import bench, data
from medusa.prompt_sets import load_prompt_set, spread_over_categories
from medusa.results import dumps_compact

TUNE_PROMPTS = Path(__file__).parent / "prompts" / "smollm2_prompts.jsonl"   # the heads' training prompts
DEFAULT_SIZES = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)


@dataclasses.dataclass
class TuneConfig:
    base_model_path: str = ""          # "" = the embedded default SmolLM2
    jittor_base_weights: str = ""
    medusa_weights: str = ""           # "" = the shipped heads of the default model
    data_path: str = str(TUNE_PROMPTS)   # not the benchmark's prompts: no tuning on the test set
    data_format: str = "auto"
    num_prompts: int = 10
    max_new_token: int = 96            # ground-truth continuation per prompt
    max_rank: int = 10                 # candidates per head considered (top-max_rank)
    sizes: tuple = DEFAULT_SIZES       # node counts whose step time is measured
    repeats: int = 5                   # timed steps per size (median kept)
    verify_prompts: int = 5            # prompts decoded with the chosen tree (0 = no check)
    output: str = ""                   # "" = results/trees/tuned_<family>.json
    device: str = "auto"
    dtype: str = ""


# ---------------------------------------------------------------- accuracy
def head_ranks(model, heads, ids, start):
    """Ranks [K, n] of the true tokens among each head's logits at positions start-1 .. T-2
    (n = T - start); -1 where the target t+k+2 lies past the end."""
    from medusa.model import build_mask
    from medusa.runtime import jt

    ids = np.asarray(ids, np.int32)
    T, K = len(ids), heads.config.num_heads
    with jt.no_grad():
        hidden = model(jt.array(ids[None]), jt.array(np.arange(T, dtype=np.int32)[None]), build_mask(1, T))
        positions = np.arange(start - 1, T - 1)                      # the base predicts t+1 there
        drafted = data.drafted_tokens(ids[None], np.zeros_like(positions), positions, K)   # [n, K]: t+k+1
        logits, _ = heads(hidden[:, start - 1:T - 1], jt.array(drafted[None]), model.lm_head_t(), model.embed_weight())
        logits = logits[:, 0].numpy()                                # [K, n, V]
    ranks = np.full((K, len(positions)), -1, np.int64)
    for k in range(K):
        rows = np.flatnonzero(positions + k + 2 < T)
        true = logits[k, rows, ids[positions[rows] + k + 2]]
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
    from medusa.decoding import Sampling, prefill, propose, resolve_tree, tree_decode
    from medusa.kvcache import KVCache

    tree = resolve_tree(choices, heads.config.num_heads)
    cache = KVCache(model.config, 1, len(context_ids) + tree.num_nodes, model.dtype)
    sampling = Sampling()
    hidden_last, root = prefill(model, cache, context_ids, sampling, None)
    past, seconds = cache.length, []
    for _ in range(repeats + 1):       # the first step compiles this tree's kernels: untimed
        start = time.perf_counter()
        tokens = propose(model, heads, tree, hidden_last, root)
        tree_decode(model, cache, tree, tokens, sampling)
        seconds.append(time.perf_counter() - start)
        cache.compact(past, [])        # drop the tree again
    return float(np.median(seconds[1:]))


# ---------------------------------------------------------------- the whole tuning
def tune(cfg: TuneConfig, setup=None, log=print):
    """Run steps 1-5; returns the report dict (the tree is report["tree"])."""
    bcfg = bench.BenchConfig(base_model_path=cfg.base_model_path, jittor_base_weights=cfg.jittor_base_weights,
                             medusa_weights=cfg.medusa_weights, device=cfg.device, dtype=cfg.dtype,
                             medusa_choices="chain")   # any tree these heads can draft; unused here
    setup = setup or bench.load_setup(bcfg)
    prompts = spread_over_categories(load_prompt_set(cfg.data_path, cfg.data_format), cfg.num_prompts)
    prompt_ids = [data.chat_prompt_ids(setup.tokenizer, [{"role": "user", "content": p.turns[0]}]) for p in prompts]
    acc, context = measure_accuracy(setup, prompt_ids, cfg, log)
    order, values = grow_tree(acc, max(cfg.sizes))
    base_step = step_time_base(setup.model, context, cfg.repeats)
    candidates = time_sizes(setup, order, values, context, base_step, cfg, log)
    best = max(candidates, key=lambda c: c["expected_tokens_per_second"])
    tree = order[:best["nodes"]]
    if cfg.verify_prompts:
        best["measured_accept"] = measured_accept(setup, tree, prompt_ids[:cfg.verify_prompts], cfg.max_new_token)
        log(f"chosen {best['nodes']} nodes: expected {best['expected_accept']:.2f} vs measured "
            f"{best['measured_accept']:.2f} tokens/step")
    return {"config": dataclasses.asdict(cfg), "resolved": {k: v for k, v in setup.resolved.items() if k != "tree"},
            "accuracy": acc.tolist(), "base_step_seconds": base_step, "candidates": candidates, "chosen": best,
            "tree": tree, "expected_accept_of_presets": _preset_expectations(acc, setup.heads.config.num_heads)}


def measure_accuracy(setup, prompt_ids, cfg, log):
    """Steps 1-2: (acc [K, max_rank], a context for timing: the first prompt + half its reply)."""
    from medusa.generate import generate

    ranks, replies = [], []
    for ids in prompt_ids:
        replies.append(generate(setup.model, ids, cfg.max_new_token, setup.eos_ids).output_ids)
        ranks.append(head_ranks(setup.model, setup.heads, ids + replies[-1], len(ids)))
    acc = accuracy_table(ranks, cfg.max_rank)
    log("head accuracy (top-1, top-max_rank): " + ", ".join(
        f"head {k}: {a[0]:.3f}/{a.sum():.3f}" for k, a in enumerate(acc)))
    return acc, prompt_ids[0] + replies[0][:len(replies[0]) // 2]


def time_sizes(setup, order, values, context, base_step, cfg, log):
    """Step 4: expected tokens/s of the first n grown nodes, for each size n of cfg.sizes."""
    candidates = []
    for n in sorted(s for s in cfg.sizes if s <= len(order)):
        seconds = step_time(setup.model, setup.heads, order[:n], context, cfg.repeats)
        expected = 1.0 + sum(values[:n])
        candidates.append({"nodes": n, "expected_accept": expected, "step_seconds": seconds,
                           "expected_tokens_per_second": expected / seconds})
        log(f"{n:3d} nodes: expected {expected:.2f} tokens/step, {seconds * 1e3:.1f} ms/step, "
            f"{expected / seconds:.1f} tokens/s (base {1 / base_step:.1f})")
    return candidates


def measured_accept(setup, tree, prompt_ids, max_new_tokens):
    """Step 5: tokens per decoding step of greedy Medusa with `tree` on these prompts."""
    from medusa.decoding import medusa_generate

    tokens = steps = 0
    for ids in prompt_ids:
        result = medusa_generate(setup.model, setup.heads, ids, max_new_tokens, choices=tree, eos_ids=setup.eos_ids)
        tokens, steps = tokens + sum(result.accept_lengths), steps + result.steps
    return tokens / max(steps, 1)


def step_time_base(model, context_ids, repeats):
    """Median seconds of one plain decoding step at this context length (for reference)."""
    from medusa.generate import stream_tokens

    times = [s for _, s in stream_tokens(model, context_ids, repeats + 2)][2:]   # skip prefill + warm-up
    return float(np.median(times))


def _preset_expectations(acc, num_heads):
    from medusa.tree import PRESETS, load_choices

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
    report_path.write_text(dumps_compact(report) + "\n")
    return path, report_path


def parse_args(argv=None) -> TuneConfig:
    d = TuneConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TuneConfig):
        if f.name == "sizes":
            p.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=d.sizes,
                           help="comma-separated node counts to time")
        else:
            p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return TuneConfig(**vars(p.parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    report = tune(cfg)
    family = report["resolved"]["head_config"]["family"]
    path, report_path = write_tree(report, cfg.output or bench.RESULTS_DIR / "trees" / f"tuned_{family}.json")
    print(f"wrote {path} ({len(report['tree'])} nodes) and {report_path}")


if __name__ == "__main__":
    main()
