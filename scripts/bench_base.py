"""Plain greedy decoding speed of the Jittor base model vs Hugging Face transformers, same CPU, one run.

    python scripts/bench_base.py [--num_prompts 6] [--max_new_token 64] [--output results/cpu_base_vs_transformers.json]

Both sides run the embedded default SmolLM2-135M-Instruct in fp32 (transformers dequantises the
same GGUF), greedy, batch 1, with their KV caches, on the shipped bench prompts (chat template).
One warm-up prompt per side is excluded (Jittor compiles kernels on first use). Prompts are
interleaved (jittor, torch, jittor, ...) so machine noise hits both alike. Reported: decode
tokens/s (prefill excluded) and end-to-end tokens/s, the ratio, and whether the ids agree.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

from medusa.data import samples as data
from medusa.decoding.core import generate
from medusa.model import weights
from medusa.runtime.backend import jt

ROOT = Path(__file__).resolve().parent.parent


def torch_greedy(ref, ids, n):
    """transformers greedy with its cache, timed per token: (new ids, prefill s, decode s)."""
    import torch
    from transformers import DynamicCache

    out, cache = [], DynamicCache()
    with torch.no_grad():
        start = time.perf_counter()
        logits = ref(torch.tensor([ids]), past_key_values=cache, use_cache=True).logits
        out.append(int(logits[0, -1].argmax()))
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(n - 1):
            logits = ref(torch.tensor([[out[-1]]]), past_key_values=cache, use_cache=True).logits
            out.append(int(logits[0, -1].argmax()))
        return out, prefill, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_prompts", type=int, default=6)
    p.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                   help="torch intra-op threads (Jittor's CPU kernels here run on one thread)")
    p.add_argument("--max_new_token", type=int, default=64)
    p.add_argument("--output", default=str(ROOT / "results" / "cpu_base_vs_transformers.json"))
    args = p.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.torch_threads)
    pkl = weights.ensure_default_model("float32")
    model = weights.load_model(pkl, "float32")
    tok = weights.load_tokenizer(pkl)
    gguf = weights.default_gguf_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                            dtype=torch.float32).eval()
    prompts = data.load_prompts(ROOT / "medusa" / "prompts" / "bench_prompts.jsonl")[:args.num_prompts + 1]
    rows = []
    for i, prompt in enumerate(prompts):
        ids = data.chat_prompt_ids(tok, [{"role": "user", "content": prompt["prompt"]}])
        n = args.max_new_token
        res = generate(model, list(ids), n)          # no EOS stop: both sides produce exactly n tokens
        t_ids, t_prefill, t_decode = torch_greedy(ref, list(ids), n)
        if i == 0:
            continue                                 # warm-up (kernel compilation), not timed
        rows.append(dict(id=prompt["id"], prompt_tokens=len(ids), new_tokens=n,
                         jittor_prefill_s=res.prefill_time, jittor_decode_s=sum(res.step_times),
                         torch_prefill_s=t_prefill, torch_decode_s=t_decode,
                         identical_ids=res.output_ids == t_ids))
        print(f"prompt {prompt['id']}: jittor {(n - 1) / sum(res.step_times):.1f} tok/s, "
              f"torch {(n - 1) / t_decode:.1f} tok/s, identical={rows[-1]['identical_ids']}", flush=True)

    def rate(side, part):
        tokens = sum(r["new_tokens"] - (1 if part == "decode" else 0) for r in rows)
        seconds = sum(r[f"{side}_decode_s"] + (r[f"{side}_prefill_s"] if part == "total" else 0) for r in rows)
        return tokens / seconds

    summary = {f"{side}_{part}_tokens_per_second": rate(side, part)
               for side in ("jittor", "torch") for part in ("decode", "total")}
    summary["jittor_over_torch_decode"] = summary["jittor_decode_tokens_per_second"] / \
        summary["torch_decode_tokens_per_second"]
    summary["identical_ids"] = sum(r["identical_ids"] for r in rows)
    result = dict(config=vars(args) | {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, fp32)",
                                       "batch": 1, "greedy": True},
                  environment=dict(jittor=jt.__version__, torch=torch.__version__,
                                   transformers=transformers.__version__, cpu=platform.processor() or
                                   platform.machine(), cores=os.cpu_count(),
                                   date=time.strftime("%Y-%m-%d %H:%M:%S")),
                  samples=rows, summary=summary)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
