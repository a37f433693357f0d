"""Where a greedy Medusa step's time goes on this machine: the device loop's step
(decoding/device_loop.py) cut into its stages, each synced and timed on its own, beside the
whole step as decoding takes it (one sync) and a plain decode step, for each heads file and tree.

    medusa step-profile --device cuda --trees chain 8_node auto
    medusa step-profile --device cuda --shape vicuna-7b --families medusa rnn   # random weights

Stages, in the step's order: verify (the base model on the tree's nodes), argmax (their logits
and each node's argmax), accept (the longest accepted path), keep (the path's cache moves),
draft (what the heads read, their prefix layer included, and the next tree's tokens). A stage's
time is split into build (Python building the Jittor ops) and run (from the sync to its end:
Jittor's scheduling and the device). The whole step is one graph: its time is less than the
stages' sum by the syncs between them. The cache (and a prefix layer's) is rewound after every
step, so each one sees the same context of --context tokens; the first --warmup steps compile.
Writes JSON and a PNG beside it (default results/step_profile_<device>.json).
"""
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medusa.app import loading
from medusa.app.results import environment
from medusa.app.settings import BaseModelArgs, ModelArgs
from medusa.bench.gpu.common import SHAPES
from medusa.decoding import core, device_loop
from medusa.decoding.tree import AUTO, resolve_auto
from medusa.decoding.tree_vars import resolve_tree
from medusa.heads import io as head_io
from medusa.heads.families import HEAD_FAMILIES, HeadConfig, build_heads
from medusa.model.config import ModelConfig
from medusa.model.transformer import Transformer
from medusa.runtime.backend import default_compute_dtype, jt, use_device
from medusa.runtime.errors import UsageError
from medusa.runtime.files import PACKAGE_DIR, atomic_write, json_default

STAGES = ("verify", "argmax", "accept", "keep", "draft")
SHIPPED = [str(PACKAGE_DIR / "trained" / f"smollm2_{f}.jtr") for f in ("medusa", "rnn", "moe")]


@dataclass
class ProfileArgs:
    medusa_weights: list[str] = field(default_factory=lambda: list(SHIPPED), metadata={
        "help": "heads files to profile (default: the shipped SmolLM2 heads of each family)"})
    shape: str = field(default="", metadata={"help": "instead of a model: random weights of this shape "
                                             f"({', '.join(SHAPES)}) with random heads of --families"})
    families: list[str] = field(default_factory=lambda: ["medusa", "rnn"], metadata={
        "help": "with --shape: the head families (random heads, 4 heads, shared lm_head)"})
    trees: list[str] = field(default_factory=lambda: ["chain", "8_node", "auto"], metadata={
        "help": "trees: presets, JSON files, or auto (the tree `medusa tune` saved beside the heads)"})
    context: int = field(default=128, metadata={"help": "tokens in the cache before each step"})
    repeats: int = field(default=30, metadata={"help": "timed steps of each kind"})
    warmup: int = field(default=3, metadata={"help": "untimed steps first (kernels compile on first use)"})
    output: str = field(default="", metadata={"help": "JSON to write (PNG beside it)"})

    def __post_init__(self):
        if self.shape and self.shape not in SHAPES:
            raise UsageError(f"--shape {self.shape}: not one of {', '.join(SHAPES)}")
        bad = [f for f in self.families if f not in HEAD_FAMILIES]
        if bad:
            raise UsageError(f"--families {bad[0]}: not one of {', '.join(HEAD_FAMILIES)}")
        for name in ("context", "repeats"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")


class StageClock:
    """Books the time since the last mark to a stage, split at the sync into build and run."""

    def __init__(self):
        self.times = {}
        self.start()

    def start(self):
        jt.sync_all(True)
        self.clock = time.perf_counter()

    def __call__(self, stage, outputs):
        built = time.perf_counter()
        jt.sync([v for v in outputs if v is not None])
        done = time.perf_counter()
        build, run = self.times.setdefault(stage, ([], []))
        build.append(built - self.clock)
        run.append(done - built)
        self.clock = done


class Rewound:
    """A state before each step, restored after it: the base cache's length and the prefix
    layer's keys and values."""

    def __init__(self, cache, state):
        self.cache, self.state, self.length = cache, state, cache.length
        self.past = None if state is None else state["past"]

    def __call__(self):
        self.cache.truncate(self.length)
        if self.state is not None:
            self.state.pop("pending", None)
            self.state["past"] = self.past


def staged_step(model, heads, cache, tree, tables, tokens, state, clock):
    """device_loop.device_step stage by stage, synced after each (the same functions)."""
    past = cache.length
    hidden = device_loop.verify(model, cache, tree, tokens)
    clock("verify", [hidden])
    argmax = device_loop.node_argmax(model, hidden)
    clock("argmax", [argmax])
    n, _, nodes, last, bonus = device_loop.accept(tree, tables, tokens, argmax)
    clock("accept", [n, nodes, bonus])
    moved = cache.move(past, nodes + past)
    clock("keep", [moved] + ([] if moved is not None else cache.keys + cache.values))
    hidden_last = device_loop.path_state(heads, state, hidden, nodes, last, n)
    clock("draft", [device_loop.propose_on_device(model, heads, tree, tables, hidden_last, bonus.reshape(1))])
    return int(n.numpy()[0])


def median_ms(seconds):
    return 1e3 * float(np.median(seconds))


def profile_tree(model, heads, tree, context_ids, args) -> dict:
    """The stages, the whole step and a decode step of `tree`, all at the same context."""
    tables, state = device_loop.path_tables(tree), heads.prefix_state()
    cache = core.new_cache(model, 1, len(context_ids) + tree.num_nodes + 2)
    hidden = core.prefill(model, cache, context_ids)
    root = int(jt.argmax(model.logits(hidden[:, -1:])[0, 0], 0)[0].item())
    tokens = device_loop.propose_on_device(model, heads, tree, tables, heads.read_prefix(state, hidden),
                                           jt.array(np.array([root], np.int32)))
    tokens.sync()
    rewind, clock = Rewound(cache, state), StageClock()
    whole, decode, accepted, accepted_whole = [], [], [], []
    for i in range(args.warmup + args.repeats):
        timed = i >= args.warmup
        clock.start()
        accepted.append(staged_step(model, heads, cache, tree, tables, tokens, state, clock))
        rewind()
        start = time.perf_counter()
        got, _ = device_loop.advance(model, heads, cache, tree, tables, tokens, state)
        whole.append(time.perf_counter() - start)
        accepted_whole.append(int(got[0]))
        rewind()
        start = time.perf_counter()
        int(device_loop.node_argmax(model, core.decode_one(model, cache, root)).numpy()[0])
        decode.append(time.perf_counter() - start)
        rewind()
        if not timed:                                      # the warm-up compiles every part: forget its times
            clock.times.clear()
            whole.clear()
            decode.clear()
    stages = {s: {"build_ms": median_ms(clock.times[s][0]), "run_ms": median_ms(clock.times[s][1]),
                  "ms": median_ms(np.add(*clock.times[s]))} for s in STAGES}
    step_ms, decode_ms = median_ms(whole), median_ms(decode)
    return {"nodes": tree.num_nodes, "depth": tree.buffers.depth, "stages": stages,
            "stages_sum_ms": sum(s["ms"] for s in stages.values()), "step_ms": step_ms, "decode_ms": decode_ms,
            "step_over_decode": step_ms / decode_ms, "accepted": accepted[args.warmup:], "accepted_whole_step": accepted_whole[args.warmup:]}


def random_model(shape, dtype):
    """A model of `shape` with seeded random weights (speed does not depend on the values)."""
    from medusa.bench.gpu.jittor_side import random_fill

    model = Transformer(ModelConfig.from_dict(SHAPES[shape]), dtype)
    random_fill(model, 0)
    return model.eval().fuse_projections() if jt.flags.use_cuda else model.eval()


def sources(base: BaseModelArgs, args: ProfileArgs):
    """(model, [(label, heads, heads file or None)], model description)."""
    if args.shape:
        device = use_device(base.device)
        model = random_model(args.shape, base.dtype or default_compute_dtype())
        c = model.config
        heads = []
        for family in args.families:
            jt.set_global_seed(0)
            h = build_heads(HeadConfig(family=family, num_heads=4, hidden_size=c.hidden_size,
                                       vocab_size=c.vocab_size, share_lm_head=True))
            heads.append((family, h.eval(), None))
        return model, heads, f"{args.shape}, random weights ({device})"
    margs = ModelArgs(**{k: getattr(base, k) for k in ("base_model_path", "jittor_base_weights", "device", "dtype")},
                      medusa_weights=args.medusa_weights[0], draft_vocab="none")
    plan = loading.plan(margs, heads="required")
    setup = loading.load(plan)
    heads = [(Path(plan.heads_path).stem, setup.heads, plan.heads_path)]
    for path in args.medusa_weights[1:]:
        head_io.check_fits(head_io.read_config(path), plan.config, path)
        heads.append((Path(path).stem, head_io.load_heads(path), path))
    return setup.model, heads, plan.model_name


def run(base: BaseModelArgs, args: ProfileArgs, progress=True) -> dict:
    model, heads, described = sources(base, args)
    context = [int(t) for t in np.random.default_rng(0).integers(100, model.config.vocab_size - 1, args.context)]
    device = "cuda" if jt.flags.use_cuda else "cpu"
    out = {"environment": environment(), "model": described, "dtype": model.dtype, "context": args.context,
           "repeats": args.repeats, "exact": model.exact_mode(), "device_loop_stages": list(STAGES), "runs": []}
    jobs = [(label, h, path, spec) for label, h, path in heads for spec in args.trees]
    with jt.no_grad():
        for label, h, path, spec in tqdm(jobs, desc="step profile", unit="tree", disable=not progress):
            name = spec
            if spec == AUTO:
                if path is None:
                    continue                               # random heads have no tuned tree
                spec = resolve_auto(path, device)
                name = f"auto ({Path(spec).stem})"
            tree = resolve_tree(spec, h.config.num_heads)
            out["runs"].append({"heads": label, "family": h.config.family, "tree": name,
                                **profile_tree(model, h, tree, context, args)})
    return out


def write(result: dict, output: Path):
    atomic_write(output, json.dumps(result, indent=1, default=json_default))
    plot(result, output.with_suffix(".png"))


def plot(result: dict, path: Path):
    """One horizontal bar per (heads, tree): its stages stacked, the whole step and the decode
    step beside it; the 1.4x-decode line each step should stay under."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(runs) + 1.6))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(runs):
        left = 0.0
        for j, s in enumerate(STAGES):
            ms = r["stages"][s]["ms"]
            ax.barh(i, ms, left=left, color=colors[j], label=s if i == 0 else None, height=0.6)
            left += ms
        ax.plot([r["step_ms"]], [i], "k|", markersize=18, label="whole step (one sync)" if i == 0 else None)
        ax.plot([r["decode_ms"], 1.4 * r["decode_ms"]], [i, i], "r:", label="decode step .. 1.4x" if i == 0 else None)
    ax.set_yticks(range(len(runs)), [f"{r['heads']} / {r['tree']} ({r['nodes']})" for r in runs])
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    env = result["environment"]
    ax.set_title(f"Medusa step by stage: {result['model']}, {env.get('gpu') or env['device']}, "
                 f"context {result['context']}, exact={result['exact']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
