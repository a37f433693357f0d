"""Torch side of medusa.bench.gpu: PyTorch transformers' LlamaForCausalLM (eager mode, default
attention implementation) with random weights, the same weights in a minimal Llama replayed as
CUDA graphs (torch_graphs.py: what a latency-minded user runs), and the device's copy bandwidth.

Imported only by the torch process of the benchmark; nothing here touches Jittor.
"""
import gc
from pathlib import Path

import numpy as np
import torch

from medusa.bench.gpu.common import (CHECKED_SHAPES, HEADS, REF_STEPS, SHAPES, Recorder, greedy_posterior, param_count,
                                     run_shapes, stats_ms, time_decode, time_medusa, timed_loop, tree_plan)
from medusa.bench.gpu.torch_graphs import graph_timing


class Side:
    """Device, dtype and sync of one run."""

    def __init__(self, cfg):
        self.cfg, self.device, self.dtype = cfg, torch.device(cfg.device), getattr(torch, cfg.dtype)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def tensor(self, array, dtype=torch.long):
        return torch.as_tensor(np.asarray(array), dtype=dtype, device=self.device)


def build_model(side: Side, shape: str):
    """LlamaForCausalLM of the shape, initialised by transformers (normal, std 0.02) on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(side.cfg.seed)
    config = LlamaConfig(**{k: v for k, v in SHAPES[shape].items() if k != "model_type"})
    default = torch.get_default_dtype()
    torch.set_default_dtype(side.dtype)  # build in fp16 directly: a 7B fp32 model would not fit the host
    try:
        with side.device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


class TorchHeads(torch.nn.Module):
    """Medusa-1 heads as FasterDecoding writes them (one ResBlock x + SiLU(W x + b) per head, in the
    model's dtype), projected with the base lm_head (HEADS: share_lm_head=True)."""

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(hidden_size, hidden_size) for _ in range(num_heads))

    def forward(self, h, lm_head):
        return torch.stack([lm_head(h + torch.nn.functional.silu(block(h))) for block in self.blocks])


def prompt_ids(cfg, vocab_size):
    return np.random.default_rng(cfg.seed).integers(0, vocab_size, cfg.prompt_len)


@torch.inference_mode()
def save_reference(side, model, shape, folder: Path):
    """The weights (safetensors) and fp32 logits of the prompt's last position and of REF_STEPS
    greedy steps: what the Jittor side must reproduce."""
    model.save_pretrained(folder)
    ids = side.tensor(prompt_ids(side.cfg, model.config.vocab_size)[None])
    out = model(input_ids=ids, use_cache=True)
    logits, tokens = [out.logits[0, -1].float()], []
    for _ in range(REF_STEPS):
        tokens.append(int(logits[-1].argmax()))
        out = model(input_ids=side.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[0, -1].float())
    np.savez(folder / "reference.npz", prompt=ids[0].cpu().numpy(), tokens=np.asarray(tokens),
             logits=torch.stack(logits).cpu().numpy())
    return {"saved": str(folder), "steps": REF_STEPS}


@torch.inference_mode()
def decode_timing(side, model):
    """Greedy one-token steps after a prefill; the token goes to the host each step, as in generation."""
    ids = side.tensor(prompt_ids(side.cfg, model.config.vocab_size)[None])
    state = {}

    def prefill():
        out = model(input_ids=ids, use_cache=True)
        state.update(cache=out.past_key_values, token=int(out.logits[0, -1].argmax()))

    def step():
        out = model(input_ids=side.tensor([[state["token"]]]), past_key_values=state["cache"], use_cache=True)
        state["token"] = int(out.logits[0, -1].argmax())

    return time_decode(prefill, step, side.cfg, side.sync)


class MedusaStep:
    """One Medusa step with transformers: heads -> candidates -> tree forward with a 4D additive
    mask over the DynamicCache -> host posterior -> in-place compaction of the accepted path."""

    def __init__(self, side, model, heads, tree):
        self.side, self.model, self.heads = side, model, heads
        self.buf, flat, self.kmax = tree_plan(tree)
        self.flat = side.tensor(flat)
        self.positions = side.tensor(self.buf.position_ids)
        block = torch.zeros(self.buf.attn_mask.shape, dtype=side.dtype, device=side.device)
        self.block = block.masked_fill(~side.tensor(self.buf.attn_mask, torch.bool), torch.finfo(side.dtype).min)

    @torch.inference_mode()
    def prefill(self, ids):
        out = self.model.model(input_ids=ids, use_cache=True)
        self.cache, self.hidden = out.past_key_values, out.last_hidden_state[:, -1:]
        self.root = int(self.model.lm_head(self.hidden)[0, 0].argmax())

    @torch.inference_mode()
    def __call__(self, mark=lambda part: None):
        """One step; mark(part) is called after each part. Returns the tokens it accepts."""
        model, side, N = self.model, self.side, self.buf.num_nodes
        L = self.cache.get_seq_length()
        medusa_logits = self.heads(self.hidden[0, 0], model.lm_head)                   # [K, V]
        top = medusa_logits.topk(self.kmax, dim=-1).indices                            # [K, kmax]
        candidates = torch.cat([side.tensor([self.root]), top.flatten()])[self.flat]   # [N]
        mark("heads")
        mask = torch.zeros((1, 1, N, L + N), dtype=side.dtype, device=side.device)
        mask[..., L:] = self.block
        out = model.model(input_ids=candidates[None], position_ids=(self.positions + L)[None],
                          attention_mask=mask, past_key_values=self.cache, use_cache=True)
        hidden = out.last_hidden_state                                                 # [1, N, H]
        predictions = model.lm_head(hidden)[0].argmax(-1)                              # [N]
        mark("tree")
        predictions = predictions.cpu().numpy()
        nodes = greedy_posterior(self.buf, candidates.cpu().numpy(), predictions)
        mark("posterior")
        keep = side.tensor(nodes + L)
        for layer in self.cache.layers:
            layer.keys[:, :, L:L + len(nodes)] = layer.keys[:, :, keep]
            layer.values[:, :, L:L + len(nodes)] = layer.values[:, :, keep]
            layer.keys, layer.values = layer.keys[:, :, :L + len(nodes)], layer.values[:, :, :L + len(nodes)]
        last = int(nodes[-1])
        self.hidden, self.root = hidden[:, last:last + 1], int(predictions[last])
        mark("update")
        return len(nodes)


def medusa_timing(side, model, tree):
    torch.manual_seed(side.cfg.seed)
    heads = TorchHeads(model.config.hidden_size, HEADS["num_heads"]).to(side.device, side.dtype).eval()
    step = MedusaStep(side, model, heads, tree)
    ids = side.tensor(prompt_ids(side.cfg, model.config.vocab_size)[None])
    return time_medusa(step, lambda: step.prefill(ids), side.cfg, side.sync)


@torch.inference_mode()
def matmul_probe(side, model, pairs=16):
    """The Jittor side's probe: 32 chained matmuls of the MLP shapes, per-matmul time and GB/s."""
    c = model.config
    up = torch.randn(c.hidden_size, c.intermediate_size, device=side.device, dtype=side.dtype) * 0.01
    down = torch.randn(c.intermediate_size, c.hidden_size, device=side.device, dtype=side.dtype) * 0.01
    x = torch.ones(1, 1, c.hidden_size, device=side.device, dtype=side.dtype)

    def run():
        y = x
        for _ in range(pairs):
            y = torch.matmul(torch.matmul(y, up), down)

    timed_loop(run, 3, side.sync)
    ms = stats_ms(timed_loop(run, 10, side.sync))["median_ms"]
    weight_bytes = 2 * pairs * up.numel() * up.element_size()
    return {"matmuls": 2 * pairs, "ms_per_matmul": ms / (2 * pairs), "GBps": weight_bytes / ms / 1e6}


def copy_bandwidth(side, nbytes):
    """Device-to-device copy of an nbytes buffer; bandwidth counts bytes read plus written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=side.device)
    dst = torch.empty_like(src)
    timed_loop(lambda: dst.copy_(src), 3, side.sync)
    median = stats_ms(timed_loop(lambda: dst.copy_(src), 20, side.sync))["median_ms"]
    return {"bytes": nbytes, "median_ms": median, "GBps_read_plus_write": 2 * nbytes / median / 1e6}


def header(side):
    import transformers

    cuda = side.device.type == "cuda"
    return {"side": "torch", "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "dtype": side.cfg.dtype, "mode": "eager (no torch.compile), default attention"}


def run(cfg) -> Recorder:
    side = Side(cfg)
    rec = Recorder(Path(cfg.out) / "gpu_torch.json", header(side))
    try:
        rec.put("_device", "copy_bandwidth", copy_bandwidth(side, (1 << 30) if side.device.type == "cuda" else 1 << 24))
    except Exception as e:  # keep going: the model timings do not need it
        rec.error("copy_bandwidth", e)

    def measure(shape):
        model = build_model(side, shape)
        rec.put(shape, "params", {"formula": param_count(SHAPES[shape]),
                                  "torch": sum(p.numel() for p in model.parameters()),
                                  "attn_implementation": model.config._attn_implementation})
        if shape in CHECKED_SHAPES:
            rec.put(shape, "reference", save_reference(side, model, shape, Path(cfg.ref_dir) / shape))
        rec.put(shape, "decode", decode_timing(side, model))
        rec.put(shape, "matmul_probe", matmul_probe(side, model))
        for tree in cfg.trees:
            rec.put(shape, f"medusa_{tree}", medusa_timing(side, model, tree))

        rec.put(shape, "torch_graphs", graph_timing(side, model, prompt_ids(cfg, model.config.vocab_size), cfg.trees))

    def cleanup():
        gc.collect()
        if side.device.type == "cuda":
            torch.cuda.empty_cache()

    return run_shapes(cfg, rec, measure, cleanup)
