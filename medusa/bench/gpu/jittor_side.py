"""Jittor side of medusa.bench.gpu: our Transformer, KVCache and draft heads, same shapes and
steps as the torch side (see the module docstring of medusa.bench.gpu). Never imports torch."""
import subprocess
import time
from pathlib import Path

import numpy as np

from medusa.bench.gpu.common import (CHECKED_SHAPES, HEADS, SHAPES, Recorder, param_count, run_shapes, stats_ms,
                                     time_decode, time_medusa, timed_loop)
from medusa.decoding import device_loop
from medusa.decoding import steps as medusa_steps
from medusa.decoding.core import decode_one, forced_logits, new_cache, prefill
from medusa.decoding.sampling import Sampling
from medusa.decoding.tree_vars import resolve_tree
from medusa.heads.families import HeadConfig, build_heads
from medusa.kernels import cuda as cuda_kernels
from medusa.model import weights
from medusa.model.config import ModelConfig
from medusa.model.transformer import Transformer
from medusa.runtime.backend import jt, use_device


def sync():
    jt.sync_all(True)


def prompt_ids(cfg, vocab_size):
    """The torch side's prompt (same seed, same generator)."""
    return np.random.default_rng(cfg.seed).integers(0, vocab_size, cfg.prompt_len)


def next_token(model, hidden) -> int:
    """Greedy token after the last position of hidden [1, T, H], fetched to the host."""
    return int(jt.argmax(model.logits(hidden[:, -1:]), dim=-1)[0].numpy().reshape(-1)[0])


def hashed_normalish(shape, seed):
    """Deterministic noise of std ~0.02 from element indices, for a Jittor without curand."""
    i, j = jt.index(shape, 0).float32(), jt.index(shape, 1).float32()
    x = jt.sin(i * 12.9898 + j * 78.233 + seed) * 43758.5453  # the classic shader hash
    return (x - jt.floor(x) - 0.5) * 0.07                        # uniform, std 0.07/sqrt(12)


def random_fill(model, seed):
    """Seeded random weights (std 0.02) made on the device, one matrix at a time; norms stay 1.
    Returns how they were made."""
    jt.set_global_seed(seed)
    how = "jt.randn"
    for _, p in model.named_parameters():
        if p.ndim > 1:
            try:
                p.assign((jt.randn(p.shape, "float32") * 0.02).cast(p.dtype))
                sync()  # execute now: frees the fp32 temporary before the next matrix
            except RuntimeError:  # no random generator on this device: any values do for timing
                how = "hashed"
                p.assign(hashed_normalish(p.shape, seed).cast(p.dtype))
                sync()
        p.stop_grad()
    return how


def build_model(cfg, shape, fused=True):
    """(model, source): the torch side's saved weights when present, else random weights; with
    `fused`, the GPU layout load_model gives (Transformer.fuse_projections), else Jittor's
    plain ops with separate projections (the path before medusa/kernels/cuda/)."""
    ref = Path(cfg.ref_dir) / shape
    if fused and (ref / "config.json").is_file():
        return weights.load_model(ref, cfg.dtype, cfg.max_len), "torch weights"
    model = Transformer(ModelConfig.from_dict(SHAPES[shape]), cfg.dtype, cfg.max_len)
    how = random_fill(model, cfg.seed)
    return (model.eval().fuse_projections() if fused else model.eval()), f"random ({how})"


def plain_ops_timing(cfg, shape):
    """Decode with Jittor's own ops (kernels off, separate projections), for before/after in one call."""
    cuda_kernels.use_kernels(False)
    try:
        model, _ = build_model(cfg, shape, fused=False)
        return {**decode_timing(cfg, model), "profile": profile_decode(cfg, model, top=6)}
    finally:
        cuda_kernels.use_kernels(True)
        del model
        sync()
        jt.gc()


def check_reference(cfg, model, folder: Path) -> dict:
    """Our logits vs transformers' on the same weights: the prompt's last position, then the
    reference's greedy tokens fed one by one (teacher forcing, so one tie cannot derail it)."""
    ref = np.load(folder / "reference.npz")
    got, want = forced_logits(model, ref["prompt"], ref["tokens"]), ref["logits"].astype(np.float64)
    rel = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    tol = 5e-2 if cfg.dtype == "float16" else 1e-4
    agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    ok = bool(np.isfinite(got).all() and rel.max() < tol and agree >= 0.75)
    return {"ok": ok, "max_rel_err": float(rel.max()), "mean_rel_err": float(rel.mean()),
            "argmax_agreement": agree, "positions": len(rel), "tolerance": tol}


class Decoder:
    """Greedy one-token steps after a prefill of the prompt (medusa.decoding.core's), the token to the host each step."""

    def __init__(self, cfg, model):
        self.model, self.cache = model, new_cache(model, 1, cfg.max_len)
        self.ids = [int(t) for t in prompt_ids(cfg, model.config.vocab_size)]

    def prefill(self):
        self.cache.reset()
        self.token = next_token(self.model, prefill(self.model, self.cache, self.ids))

    def step(self):
        self.token = next_token(self.model, decode_one(self.model, self.cache, self.token))


def decode_timing(cfg, model):
    decoder = Decoder(cfg, model)
    return time_decode(decoder.prefill, decoder.step, cfg, sync)


def profile_decode(cfg, model, steps=3, top=12):
    """Jittor's profiler over a few decode steps: the kernels that take the most time."""
    decoder = Decoder(cfg, model)
    decoder.prefill()
    decoder.step()
    with jt.profile_scope(warmup=0, rerun=0) as report:
        for _ in range(steps):
            decoder.step()
    return _profile_rows(report, steps, top)


def profile_tree(cfg, model, tree, steps=3, top=12):
    """Jittor's profiler over a few verification forwards of `tree` (medusa.decoding.steps.tree_decode: the
    base model on every node, their logits and argmax), the cache rewound after each."""
    c = model.config
    jt.set_global_seed(cfg.seed)
    heads = build_heads(HeadConfig(**HEADS, hidden_size=c.hidden_size, vocab_size=c.vocab_size))
    heads.eval()
    step = MedusaStep(cfg, model, heads, tree)
    step.prefill(prompt_ids(cfg, c.vocab_size))
    past = step.cache.length

    def verify():
        medusa_steps.tree_decode(model, step.cache, step.tree, step.tokens, step.sampling)
        step.cache.truncate(past)

    verify()
    with jt.profile_scope(warmup=0, rerun=0) as report:
        for _ in range(steps):
            verify()
    return _profile_rows(report, steps, top)


def _profile_rows(report, steps, top):
    header, rows = report[0], report[1:]
    col = {name: header.index(name) for name in ("Name", "Count", "TotalTime")}
    kernels = sorted(({"ops": _op_names(r[col["Name"]]), "count": int(r[col["Count"]]),
                       "ms_per_step": float(r[col["TotalTime"]]) / 1e6 / steps} for r in rows),
                     key=lambda k: -k["ms_per_step"])
    return {"steps": steps, "kernel_ms_per_step": sum(k["ms_per_step"] for k in kernels),
            "kernels": len(kernels), "top": kernels[:top]}


def _op_names(key: str) -> str:
    """A profiler row's kernel key, e.g. '«opkey0:broadcast_to«Tx:float16«...«OP:multiply«...',
    shortened to its ops and first dtype: 'broadcast_to binary multiply reduce add float16'."""
    parts = [p for p in key.split("«") if p]
    names = [p.split(":", 1)[1] if p.startswith("opkey") else p[3:] for p in parts
             if p.startswith(("opkey", "OP:"))] or parts[:1]
    dtype = next((p.split(":", 1)[1] for p in parts if p.startswith(("Tx:", "Ti:", "T:"))), "")
    return " ".join(names + [dtype])[:160]


def matmul_probe(cfg, model, pairs=16):
    """32 chained fp16 matmuls of the MLP shapes ([1,H]x[H,I], [1,I]x[I,H]) in one graph:
    per-matmul time and the weight bytes read per second."""
    c = model.config
    up = (jt.randn((c.hidden_size, c.intermediate_size)) * 0.01).cast(cfg.dtype)
    down = (jt.randn((c.intermediate_size, c.hidden_size)) * 0.01).cast(cfg.dtype)
    x = jt.ones((1, 1, c.hidden_size), cfg.dtype)
    sync()

    def run():
        y = x
        for _ in range(pairs):
            y = jt.matmul(jt.matmul(y, up), down)
        y.sync()

    timed_loop(run, 3, sync)
    ms = stats_ms(timed_loop(run, 10, sync))["median_ms"]
    weight_bytes = 2 * pairs * up.numel() * (2 if cfg.dtype == "float16" else 4)
    return {"matmuls": 2 * pairs, "ms_per_matmul": ms / (2 * pairs), "GBps": weight_bytes / ms / 1e6}


class MedusaStep:
    """One Medusa step exactly as `medusa.decoding.loop.medusa_stream` takes it on the host (greedy): tree_decode
    (the N tree nodes over the KVCache with the tree mask, argmax to the host) -> evaluate_posterior
    -> update_inputs (KVCache.compact of the accepted path) -> propose (heads -> top-k -> the next
    tree's tokens, to the host)."""

    def __init__(self, cfg, model, heads, tree):
        self.model, self.heads = model, heads
        self.tree = resolve_tree(tree, heads.config.num_heads)
        self.buf = self.tree.buffers
        self.cache = new_cache(model, 1, cfg.max_len)
        self.sampling, self.rng = Sampling("greedy"), np.random.default_rng(cfg.seed)

    def prefill(self, ids):
        self.cache.reset()
        hidden, root = medusa_steps.prefill(self.model, self.cache, ids, self.sampling, self.rng)
        self.tokens = medusa_steps.propose(self.model, self.heads, self.tree, hidden[:, -1:], root)

    def __call__(self, mark=lambda part: None):
        """One step; mark(part) is called after each part. Returns the tokens it accepts."""
        model, tree = self.model, self.tree
        hidden, scores = medusa_steps.tree_decode(model, self.cache, tree, self.tokens, self.sampling)
        mark("tree")
        path, bonus = medusa_steps.evaluate_posterior(tree, self.tokens, scores, self.sampling, self.rng)
        mark("posterior")
        hidden_last = medusa_steps.update_inputs(self.cache, tree, path, hidden)
        mark("update")
        self.tokens = medusa_steps.propose(model, self.heads, tree, hidden_last, bonus)
        mark("heads")
        return len(path)


class DeviceMedusaStep(MedusaStep):
    """One greedy Medusa step as `medusa.decoding.device_loop.DeviceStepper` takes it: the whole step as one
    graph on the device (tree forward, argmax, accepted path, cache moves, next tree's tokens)
    and one fetch of a few ints, all booked as "tree"."""

    def prefill(self, ids):
        self.cache.reset()
        hidden, root = medusa_steps.prefill(self.model, self.cache, ids, self.sampling, self.rng)
        self.tables = device_loop.path_tables(self.tree)
        self.tokens = device_loop.propose_on_device(self.model, self.heads, self.tree, self.tables, hidden[:, -1:],
                                                    jt.array(np.array([root], np.int32)))
        self.tokens.sync()

    def __call__(self, mark=lambda part: None):
        got, self.tokens = device_loop.advance(self.model, self.heads, self.cache, self.tree, self.tables,
                                               self.tokens)
        mark("tree")
        return int(got[0])


def medusa_timing(cfg, model, tree, step_class=MedusaStep):
    c = model.config
    jt.set_global_seed(cfg.seed)
    heads = build_heads(HeadConfig(**HEADS, hidden_size=c.hidden_size, vocab_size=c.vocab_size))
    heads.eval()
    step = step_class(cfg, model, heads, tree)
    ids = prompt_ids(cfg, c.vocab_size)
    return time_medusa(step, lambda: step.prefill(ids), cfg, sync)


def header(cfg, device):
    gpu = "cpu"
    if device == "cuda":
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    return {"side": "jittor", "device": gpu, "jittor": jt.__version__, "dtype": cfg.dtype,
            "heads": {**HEADS, "dtype": "float32 ResBlocks (as medusa.heads.families computes), the shared vocab "
                                     "projection in the base dtype"},
            "medusa_step": "medusa.decoding.steps: propose, tree_decode, evaluate_posterior, update_inputs",
            "model": "fused projections + medusa/kernels/cuda/; decode_jittor_ops: Jittor's own ops"}


def run(cfg) -> Recorder:
    device = use_device(cfg.device)
    rec = Recorder(Path(cfg.out) / "gpu_jittor.json", header(cfg, device))

    def measure(shape):
        start = time.perf_counter()
        if not cfg.skip_plain_ops:
            rec.put(shape, "decode_jittor_ops", plain_ops_timing(cfg, shape))
        model, source = build_model(cfg, shape)
        rec.put(shape, "params", {"formula": param_count(SHAPES[shape]), "weights": source,
                                  "build_s": time.perf_counter() - start})
        ref = Path(cfg.ref_dir) / shape
        if shape in CHECKED_SHAPES and (ref / "reference.npz").is_file():
            rec.put(shape, "check_vs_torch", check_reference(cfg, model, ref))
        rec.put(shape, "decode", decode_timing(cfg, model))

        cuda_kernels.use_layer_op(False)             # the same kernels, one op each (six a layer)
        try:
            rec.put(shape, "decode_six_ops", decode_timing(cfg, model))
            rec.put(shape, "profile_decode_six_ops", profile_decode(cfg, model))
        finally:
            cuda_kernels.use_layer_op(True)
        cuda_kernels.use_gemv(False)                 # one-row matmuls on cuBLAS (and no layer op)
        try:
            rec.put(shape, "decode_cublas_gemv", decode_timing(cfg, model))
        finally:
            cuda_kernels.use_gemv(True)
        rec.put(shape, "profile_decode", profile_decode(cfg, model))
        rec.put(shape, "profile_tree_mc_sim_7b_63", profile_tree(cfg, model, "mc_sim_7b_63"))
        rec.put(shape, "matmul_probe", matmul_probe(cfg, model))
        for tree in cfg.trees:
            rec.put(shape, f"medusa_{tree}", medusa_timing(cfg, model, tree))
            rec.put(shape, f"medusa_{tree}_device_loop", medusa_timing(cfg, model, tree, DeviceMedusaStep))
        cuda_kernels.use_rows_layer(False)           # a small model's tree layer as ~10 ops, not one
        try:
            rec.put(shape, "medusa_mc_sim_7b_63_no_rows_layer", medusa_timing(cfg, model, "mc_sim_7b_63"))
        finally:
            cuda_kernels.use_rows_layer(True)
        cuda_kernels.use_tree_attention(False)       # a tree's attention one block per row, not flash_tree
        try:
            for tree in cfg.trees:
                rec.put(shape, f"medusa_{tree}_per_row_attention", medusa_timing(cfg, model, tree))
            rec.put(shape, "profile_tree_mc_sim_7b_63_per_row_attention", profile_tree(cfg, model, "mc_sim_7b_63"))
        finally:
            cuda_kernels.use_tree_attention(True)
        cuda_kernels.use_mma(False)                  # a tree's projections on cuBLAS instead of mma_rows
        try:
            rec.put(shape, "medusa_mc_sim_7b_63_cublas", medusa_timing(cfg, model, "mc_sim_7b_63"))
        finally:
            cuda_kernels.use_mma(True)

    def cleanup():
        sync()
        jt.gc()

    with jt.no_grad():
        return run_shapes(cfg, rec, measure, cleanup)
