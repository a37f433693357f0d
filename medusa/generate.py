"""Plain autoregressive generation with the KV cache, and `python -m medusa.generate`.

    python -m medusa.generate --prompt "Hello" --greedy --max_new_token 32 --json

With no model arguments it uses the embedded default SmolLM2-135M-Instruct (converted on
first use). `--medusa_weights` switches to Medusa tree decoding (medusa/decoding.py).
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medusa import weights
from medusa.data import chat_prompt_ids
from medusa.kvcache import KVCache
from medusa.model import build_mask
from medusa.runtime import jt, use_device
from medusa.sampling import choose_token


@dataclass
class GenerationResult:
    output_ids: list
    step_times: list = field(default_factory=list)   # seconds per decode step (prefill excluded)
    prefill_time: float = 0.0

    @property
    def wall_time(self):
        return self.prefill_time + sum(self.step_times)


def resolve_model(base_model_path=None, jittor_base_weights=None, dtype="float16"):
    """(weights source, tokenizer folder) for the CLI arguments; the embedded default when both
    are None. A .gguf is converted once into the cache (its tokenizer needs conversion)."""
    if jittor_base_weights:
        pkl = Path(jittor_base_weights)
        tok = pkl.parent if (pkl.parent / "tokenizer.json").is_file() else base_model_path
        if tok is None:
            raise FileNotFoundError(f"{pkl}: no tokenizer.json beside it; pass --base_model_path too")
        return pkl, Path(tok)
    if base_model_path is None:
        pkl = weights.ensure_default_model(dtype)
        return pkl, pkl.parent
    src = Path(base_model_path)
    if src.suffix == ".gguf":
        out = weights.default_model_dir().parent / src.stem / "model.pkl"
        if not out.is_file():
            print(f"converting {src} into {out} (once)", file=sys.stderr, flush=True)
            weights.convert(src, out, dtype)
        return out, out.parent
    return src, src


def stream_tokens(model, prompt_ids, max_new_tokens, eos_ids=(), greedy=True, temperature=1.0,
                  top_p=1.0, seed=0, max_len=None):
    """Yield (token, seconds) for each new token; the first token's time is the prefill."""
    rng = np.random.default_rng(seed)
    T = len(prompt_ids)
    cache = KVCache(model.config, 1, max_len or T + max_new_tokens, model.dtype)
    cache.check_room(T + max_new_tokens - 1)
    tokens = jt.array(np.asarray(prompt_ids, dtype=np.int32)[None])
    positions = jt.array(np.arange(T, dtype=np.int32)[None])
    mask = build_mask(1, T) if T > 1 else None
    for _ in range(max_new_tokens):
        start = time.perf_counter()
        hidden = model(tokens, positions, mask, cache)
        logits = model.logits(hidden[:, -1:]).numpy()[0, 0]
        token = choose_token(logits, greedy, temperature, top_p, rng)
        yield token, time.perf_counter() - start
        if token in eos_ids:
            return
        tokens = jt.array(np.array([[token]], dtype=np.int32))
        positions = jt.array(np.array([[cache.length]], dtype=np.int32))
        mask = None  # a single new token may attend to everything cached


def forced_logits(model, prompt_ids, tokens):
    """fp64 logits [len(tokens) + 1, V]: after the prompt, then after each of `tokens` fed one by
    one through the KV cache (teacher forcing: a reference's tokens, so one tie cannot derail it)."""
    T = len(prompt_ids)
    cache = KVCache(model.config, 1, T + len(tokens) + 1, model.dtype)
    hidden = model(jt.array(np.asarray(prompt_ids, dtype=np.int32)[None]), jt.array(np.arange(T, dtype=np.int32)[None]),
                   build_mask(1, T), cache)
    rows = [model.logits(hidden[:, -1:]).numpy()[0, 0]]
    for token in tokens:
        hidden = model(jt.array(np.array([[token]], dtype=np.int32)),
                       jt.array(np.array([[cache.length]], dtype=np.int32)), None, cache)
        rows.append(model.logits(hidden).numpy()[0, 0])
    return np.stack(rows).astype(np.float64)


def generate(model, prompt_ids, max_new_tokens, eos_ids=(), **sampling):
    """Plain autoregressive decoding; stops after an EOS token (included) or max_new_tokens."""
    result = GenerationResult(output_ids=[])
    for i, (token, seconds) in enumerate(stream_tokens(model, prompt_ids, max_new_tokens, eos_ids, **sampling)):
        result.output_ids.append(token)
        if i == 0:
            result.prefill_time = seconds
        else:
            result.step_times.append(seconds)
    return result


def encode_prompt(tokenizer, prompt, chat):
    if chat:
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer(prompt)["input_ids"]


def eos_ids_of(model, tokenizer):
    ids = set(model.config.eos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True)
    p.add_argument("--base_model_path", help="Hugging Face folder or .gguf (default: embedded SmolLM2)")
    p.add_argument("--jittor_base_weights", help="converted .pkl from weight_convert.py")
    p.add_argument("--medusa_weights", help="draft heads (.jtr); enables Medusa decoding")
    p.add_argument("--medusa_choices", default="8_node", help="tree preset name or JSON file")
    p.add_argument("--max_new_token", type=int, default=128)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    mode.add_argument("--temperature", type=float, help="sample at this temperature")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--sampling_mode", default="sample", choices=["sample", "typical"],
                   help="Medusa with --temperature: speculative sampling (exact) or typical acceptance")
    p.add_argument("--posterior_threshold", type=float, default=0.09, help="typical acceptance epsilon")
    p.add_argument("--posterior_alpha", type=float, default=0.3, help="typical acceptance delta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--dtype", choices=["float16", "float32"], help="compute dtype (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help='print {"prompt_ids", "output_ids", "text", ...}')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device)
    src, tok_dir = resolve_model(args.base_model_path, args.jittor_base_weights)
    model = weights.load_model(src, args.dtype)
    tokenizer = weights.load_tokenizer(tok_dir)
    prompt_ids = list(encode_prompt(tokenizer, args.prompt, args.chat))
    greedy = args.temperature is None
    sampling = dict(greedy=greedy, temperature=args.temperature or 1.0, top_p=args.top_p, seed=args.seed)
    eos = eos_ids_of(model, tokenizer)
    record = {"prompt_ids": prompt_ids}
    if args.medusa_weights:
        from medusa.decoding import run_cli_medusa  # imported only when Medusa is asked for

        record.update(run_cli_medusa(model, prompt_ids, args, eos, sampling))
    else:
        result = generate(model, prompt_ids, args.max_new_token, eos, **sampling)
        record.update(output_ids=result.output_ids,
                      tokens_per_second=len(result.output_ids) / max(result.wall_time, 1e-9))
    record["text"] = tokenizer.decode(record["output_ids"], skip_special_tokens=True)
    print(json.dumps(record) if args.json else record["text"])


if __name__ == "__main__":
    main()
