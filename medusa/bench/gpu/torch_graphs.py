"""The strongest PyTorch side of medusa.bench.gpu: a minimal Llama replayed as one CUDA graph per step.

What a latency-minded PyTorch user runs at batch 1 (gpt-fast, vLLM and SGLang all capture graphs):
fused q/k/v and gate/up weights, a static KV cache written with index_copy_, scaled dot-product
attention with a boolean mask over the whole static cache, and every step captured once with
torch.cuda.graph and replayed, so the host launches one graph instead of hundreds of kernels. The
weights are the transformers model's own (the eager side's), so both torch sides compute the same
model; `check_against` compares its logits with transformers'.

    model = GraphLlama(hf_model, max_len)
    step = GraphStep(model, rows=1)          # decode; rows=N: a tree of N nodes
    logits = step(tokens, positions, slots, mask)   # one replay (eager on a CPU)

Imported only by the torch process of the benchmark; nothing here touches Jittor.
"""
import numpy as np
import torch
import torch.nn.functional as F

from medusa.bench.gpu.common import stats_ms, timed_loop, tree_plan


class GraphLlama(torch.nn.Module):
    """LlamaForCausalLM's math in a few fused ops per layer, over a static cache of max_len."""

    def __init__(self, hf_model, max_len: int):
        super().__init__()
        c = hf_model.config
        self.nq, self.nkv = c.num_attention_heads, c.num_key_value_heads
        self.d = getattr(c, "head_dim", None) or c.hidden_size // self.nq
        self.eps = c.rms_norm_eps
        base = hf_model.model
        p = next(hf_model.parameters())
        self.layers = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(dict(
                qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
                o=a.o_proj.weight.detach(), gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach(),
                down=m.down_proj.weight.detach(), norm1=layer.input_layernorm.weight.detach(),
                norm2=layer.post_attention_layernorm.weight.detach()))
        self.embed = base.embed_tokens.weight.detach()
        self.norm = base.norm.weight.detach()
        self.lm_head = hf_model.lm_head.weight.detach()
        rotary = base.rotary_emb             # transformers' own frequencies (and scaling), 4.x and 5.x
        inv_freq = rotary.inv_freq.detach().to("cpu", torch.float64)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.cos, self.sin = ((scale * t).to(device=p.device, dtype=torch.float32) for t in (angles.cos(), angles.sin()))
        shape = (len(self.layers), 1, self.nkv, max_len, self.d)
        self.keys = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.values = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def rms_norm(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * w.float()).to(x.dtype)

    def rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)

    def forward(self, tokens, positions, slots, mask):
        """tokens, positions, slots: int64 [T] (RoPE positions; cache slots the new K/V go to);
        mask: bool [1, 1, T, max_len] (True = attend) -> fp32 logits [T, V]."""
        T, nq, nkv, d = tokens.shape[0], self.nq, self.nkv, self.d
        x = self.embed[tokens][None]                                    # [1, T, H]
        cos, sin = self.cos[positions][None, None], self.sin[positions][None, None]
        for i, w in enumerate(self.layers):
            h = self.rms_norm(x, w["norm1"])
            q, k, v = F.linear(h, w["qkv"]).view(1, T, nq + 2 * nkv, d).transpose(1, 2).split([nq, nkv, nkv], 1)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            self.keys[i].index_copy_(2, slots, k)
            self.values[i].index_copy_(2, slots, v)
            o = F.scaled_dot_product_attention(q, self.keys[i], self.values[i], attn_mask=mask,
                                               enable_gqa=nq != nkv)
            x = x + F.linear(o.transpose(1, 2).reshape(1, T, nq * d), w["o"])
            gate, up = F.linear(self.rms_norm(x, w["norm2"]), w["gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w["down"])
        return F.linear(self.rms_norm(x, self.norm), self.lm_head)[0].float()


class GraphStep:
    """One step of `rows` new tokens: static inputs, captured once as a CUDA graph (eager on a
    CPU, where there are no graphs); calling it copies the inputs in and replays."""

    def __init__(self, model: GraphLlama, rows: int):
        dev, max_len = model.keys.device, model.keys.shape[3]
        self.model, self.rows, self.graph = model, rows, None
        self.tokens = torch.zeros(rows, dtype=torch.long, device=dev)
        self.positions = torch.zeros(rows, dtype=torch.long, device=dev)
        self.slots = torch.arange(rows, dtype=torch.long, device=dev)
        self.mask = torch.zeros(1, 1, rows, max_len, dtype=torch.bool, device=dev)
        self.mask[..., 0] = True
        if dev.type == "cuda":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):                      # warm-up outside the graph (cuBLAS handles, ...)
                    self.out = model(self.tokens, self.positions, self.slots, self.mask)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = model(self.tokens, self.positions, self.slots, self.mask)

    @torch.inference_mode()
    def __call__(self, tokens, positions, slots, mask):
        """Host or device inputs of this step's shape -> logits [rows, V] (a static tensor)."""
        for static, new in ((self.tokens, tokens), (self.positions, positions), (self.slots, slots),
                            (self.mask, mask)):
            static.copy_(torch.as_tensor(new), non_blocking=True)
        if self.graph is None:
            self.out = self.model(self.tokens, self.positions, self.slots, self.mask)
        else:
            self.graph.replay()
        return self.out


def causal_mask(rows, past, max_len, block=None):
    """bool [1, 1, rows, max_len]: every cached position < past, then `block` [rows, rows] (the
    tree's; default causal) over the new ones."""
    m = np.zeros((1, 1, rows, max_len), dtype=bool)
    m[..., :past] = True
    m[0, 0, :, past:past + rows] = np.tril(np.ones((rows, rows), bool)) if block is None else block
    return m


@torch.inference_mode()
def check_against(hf_model, model: GraphLlama, ids) -> dict:
    """The graph model's logits on a prompt (one prefill step, eager) vs transformers'."""
    want = hf_model(input_ids=torch.as_tensor(ids)[None].to(model.keys.device)).logits[0].float()
    n = len(ids)
    max_len = model.keys.shape[3]
    got = model(torch.as_tensor(ids).to(want.device), torch.arange(n, device=want.device),
                torch.arange(n, device=want.device), torch.as_tensor(causal_mask(n, 0, max_len)).to(want.device))
    rel = (torch.linalg.norm(got - want, dim=-1) / torch.linalg.norm(want, dim=-1)).max().item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    return {"max_rel_err": rel, "argmax_agreement": agree, "positions": n}


@torch.inference_mode()
def graph_timing(side, hf_model, prompt, trees) -> dict:
    """Decode steps (one token, its argmax to the host, as generation does) and tree steps of the
    trees' node counts (logits of every node, their argmax to the host), each one graph replay."""
    cfg = side.cfg
    model = GraphLlama(hf_model, cfg.max_len)
    out = {"check_vs_transformers": check_against(hf_model, model, prompt[:32])}
    P, dev = len(prompt), model.keys.device
    ar = torch.arange(P, device=dev)
    logits = model(torch.as_tensor(prompt).to(dev), ar, ar, torch.as_tensor(causal_mask(P, 0, cfg.max_len)).to(dev))
    token = int(logits[-1].argmax())                   # the prefill runs eagerly, once
    decode = GraphStep(model, 1)
    mask = torch.as_tensor(causal_mask(1, P, cfg.max_len)).to(dev)
    state = {"length": P, "token": token}

    def step():
        L = state["length"]
        mask[..., L] = True
        one = torch.tensor([L], device=dev)
        state["token"] = int(decode(torch.tensor([state["token"]], device=dev), one, one, mask)[0].argmax())
        state["length"] = L + 1

    timed_loop(step, cfg.warmup, side.sync)
    times = timed_loop(step, min(cfg.new_tokens, cfg.max_len - P - 80), side.sync, cfg.measure_s)
    out["graph_decode"] = {**stats_ms(times), "context_end": state["length"]}
    for tree in trees:
        buf = tree_plan(tree)[0]
        N, past = buf.num_nodes, P
        node = GraphStep(model, N)
        tokens = np.random.default_rng(cfg.seed).integers(0, model.embed.shape[0], N)
        inputs = (tokens, past + buf.position_ids, past + np.arange(N), causal_mask(N, past, cfg.max_len,
                                                                                   buf.attn_mask))
        timed_loop(lambda: node(*inputs).argmax(-1).cpu(), cfg.warmup, side.sync)
        times = timed_loop(lambda: node(*inputs).argmax(-1).cpu(), cfg.medusa_steps, side.sync, cfg.measure_s)
        out[f"graph_tree_{tree}"] = {"nodes": N, **stats_ms(times)}
    del model
    return out
