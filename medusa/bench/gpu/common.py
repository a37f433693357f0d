"""What both sides of the GPU benchmark share: shapes, settings, timing loops, the recorder.
Imports nothing of the benchmark itself (see the package docstring)."""
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medusa.decoding.tree import build_tree_buffers, load_choices
from medusa.runtime.files import atomic_write, json_default

# config.json dicts (Hugging Face keys) of the benchmarked shapes
SHAPES = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
                         rope_theta=100000.0, max_position_embeddings=8192),
    "vicuna-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      vocab_size=32000, tie_word_embeddings=False, rms_norm_eps=1e-6,
                      rope_theta=10000.0, max_position_embeddings=4096),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=320,
                 tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
                 max_position_embeddings=512),
}
CHECKED_SHAPES = ("smollm2-135m", "tiny")  # weights shared between the sides, logits compared
HEADS = dict(family="medusa", num_heads=4, num_layers=1, share_lm_head=True)
REF_STEPS = 8  # decode steps whose logits the correctness check compares


@dataclass
class BenchConfig:
    side: str = "jittor"              # jittor | torch | report
    out: str = "bench_out"            # folder of gpu_<side>.json
    ref_dir: str = ""                 # torch side's weights + reference logits (default OUT/ref)
    shapes: list = field(default_factory=lambda: ["smollm2-135m", "vicuna-7b"])
    trees: list = field(default_factory=lambda: ["8_node", "mc_sim_7b_63"])
    prompt_len: int = 128
    new_tokens: int = 256             # timed decode steps
    medusa_steps: int = 64            # timed Medusa steps per tree
    part_steps: int = 16              # Medusa steps timed part by part (a sync after each part)
    warmup: int = 4                   # untimed steps first (kernels compile on first use)
    measure_s: float = 45.0           # stop a timed loop early after this long (fewer steps)
    device: str = "cuda"
    dtype: str = ""                   # default: float16 on cuda, float32 on cpu
    seed: int = 0
    skip_plain_ops: bool = False      # jittor side: no decode with Jittor's own ops (before/after)
    results: str = ""                 # report side: the merged JSON to write (PNG beside it)
    runs: list = field(default_factory=list)  # report side: OUT folders to merge, in order
    note: list = field(default_factory=list)  # report side: notes kept in the JSON

    def __post_init__(self):
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}; known: {sorted(SHAPES)}")
        self.dtype = self.dtype or ("float16" if self.device == "cuda" else "float32")
        self.ref_dir = self.ref_dir or str(Path(self.out) / "ref")

    @property
    def max_len(self) -> int:
        """KV-cache room: prompt, every decode step, and one tree of up to 64 nodes on top."""
        return self.prompt_len + max(self.new_tokens, self.medusa_steps * 5) + 80


DRY_RUN = dict(shapes=["tiny"], prompt_len=16, new_tokens=6, medusa_steps=4, part_steps=2, warmup=1)


# ----------------------------------------------------------------------------- shared helpers

def param_count(cfg: dict) -> int:
    """Parameters of a Llama-style config dict (biases absent)."""
    h, i, v, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    return v * h * (1 if cfg["tie_word_embeddings"] else 2) + n * layer + h


def stats_ms(seconds) -> dict:
    """Median and spread of a list of per-step times, in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)
    if not ms:
        return {"steps": 0}
    q = lambda f: ms[min(len(ms) - 1, int(f * len(ms)))]  # noqa: E731
    median = statistics.median(ms)
    steady = [t for t in ms if t <= 3 * median]  # a step 3x the median compiled a kernel (Jittor JIT)
    return {"median_ms": median, "mean_ms": statistics.fmean(ms), "p10_ms": q(0.1), "p90_ms": q(0.9),
            "min_ms": ms[0], "steps": len(ms), "steady_mean_ms": statistics.fmean(steady),
            "spikes": len(ms) - len(steady)}


def tree_plan(tree_name: str):
    """(TreeBuffers, flat index of every node into concat([root], topk(K x kmax).flatten()), kmax)."""
    buf = build_tree_buffers(load_choices(tree_name, HEADS["num_heads"]))
    kmax = max(buf.topk)
    flat = [0] + [1 + (len(p) - 1) * kmax + p[-1] for p in buf.choices]
    return buf, np.asarray(flat, dtype=np.int64), kmax


def greedy_posterior(buf, tree_tokens, predictions) -> np.ndarray:
    """Node ids of the longest accepted root-to-leaf prefix (root included).

    tree_tokens [N]: the candidate token of each node; predictions [N]: the base model's argmax
    after each node. A child is accepted when its token is what its parent predicted."""
    tree_tokens, predictions = np.asarray(tree_tokens), np.asarray(predictions)
    paths = buf.retrieve_indices                                  # [P, depth+1], -1 padded
    ok = (tree_tokens[paths[:, 1:]] == predictions[paths[:, :-1]]) & buf.valid_mask[:, 1:]
    accepted = np.cumprod(ok, axis=1).sum(axis=1)                 # [P]
    best = int(np.argmax(accepted))
    return paths[best, :1 + accepted[best]]


def write_json(path, data):
    atomic_write(path, json.dumps(data, indent=1, default=json_default) + "\n")


class Recorder:
    """The side's result dict, rewritten to disk after every `put`."""

    def __init__(self, path, header: dict):
        self.path, self.data = Path(path), {**header, "shapes": {}, "errors": []}
        write_json(self.path, self.data)

    def put(self, shape: str, key: str, value):
        self.data["shapes"].setdefault(shape, {})[key] = value
        write_json(self.path, self.data)
        print(f"[{self.data['side']}] {shape} {key}: {json.dumps(value, default=json_default)[:400]}",
              flush=True)

    def error(self, where: str, exc: BaseException):
        self.data["errors"].append({"where": where, "error": repr(exc)[-3000:]})
        write_json(self.path, self.data)
        print(f"[{self.data['side']}] ERROR in {where}: {exc!r}", file=sys.stderr, flush=True)


def run_shapes(cfg, rec: Recorder, measure, cleanup):
    """measure(shape) for every shape of cfg (it records what it measures); an exception is
    recorded and the next shape still runs. cleanup() after each shape frees the device memory."""
    for shape in cfg.shapes:
        start = time.perf_counter()
        try:
            measure(shape)
        except Exception as e:
            rec.error(shape, e)
        rec.put(shape, "total_s", time.perf_counter() - start)
        cleanup()
    return rec


def timed_loop(step, n: int, sync, limit_s: float = float("inf")) -> list:
    """Seconds of each of n calls of step(), each followed by sync(); fewer once limit_s is spent."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
        if sum(times) > limit_s:
            break
    return times


class PartTimer:
    """Passed as `mark` to a Medusa step: syncs the device and records the time since the last mark."""

    def __init__(self, sync):
        self.sync, self.parts = sync, {}

    def start(self):
        self.sync()
        self.clock = time.perf_counter()

    def __call__(self, part: str):
        self.sync()
        now = time.perf_counter()
        self.parts.setdefault(part, []).append(now - self.clock)
        self.clock = now


def time_decode(prefill, step, cfg, sync) -> dict:
    """prefill() then cfg.warmup untimed steps; prefill again (timed) and cfg.new_tokens timed steps."""
    prefill()
    timed_loop(step, cfg.warmup, sync)
    prefill_s = timed_loop(prefill, 1, sync)[0]
    times = timed_loop(step, cfg.new_tokens, sync, cfg.measure_s)
    quarter = max(1, len(times) // 4)  # does a step slow down as the context grows?
    return {**stats_ms(times), "prefill_ms": 1e3 * prefill_s,
            "first_quarter_median_ms": stats_ms(times[:quarter])["median_ms"],
            "last_quarter_median_ms": stats_ms(times[-quarter:])["median_ms"]}


def time_medusa(step, prefill, cfg, sync) -> dict:
    """Whole Medusa steps (step(mark) -> tokens accepted), then steps timed part by part."""
    prefill()
    timed_loop(step, cfg.warmup, sync)
    prefill()
    accepted = []
    times = timed_loop(lambda: accepted.append(step()), cfg.medusa_steps, sync, cfg.measure_s)
    prefill()
    timer = PartTimer(sync)
    for _ in range(min(cfg.part_steps, len(times))):
        timer.start()
        step(timer)
    return {"nodes": step.buf.num_nodes, **stats_ms(times),
            "mean_tokens_per_step": float(np.mean(accepted)),
            "parts_median_ms": {k: stats_ms(v)["median_ms"] for k, v in timer.parts.items()}}
