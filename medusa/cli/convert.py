"""`medusa convert` (weight_convert.py): convert checkpoints for medusa-jittor.

Base model -> Jittor .pkl or .safetensors (+ config.json and tokenizer files beside it):
    python weight_convert.py --base_model_path SRC --output DIR/model.pkl [--dtype float16|float32] [--format safetensors]
  SRC: a Hugging Face folder (safetensors or pytorch_model*.bin, single or sharded) or a .gguf.
  With no arguments: converts the embedded default SmolLM2-135M-Instruct into the cache folder
  ($MEDUSA_JITTOR_HOME, default ~/.cache/medusa-jittor) and prints where.

FasterDecoding Medusa heads -> .jtr (+ <stem>_config.json):
    python weight_convert.py --medusa_weights medusa_lm_head.pt --output heads.jtr [--base_model_path SRC]
  The head count is read from the file's keys. Heads saved without a vocab projection use the
  base lm_head: pass --base_model_path (or --jittor_base_weights) for those.
"""
import argparse
from pathlib import Path

from medusa import cli
from medusa.heads import io as head_io
from medusa.model import weights
from medusa.runtime.errors import UsageError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model_path", help="Hugging Face folder or .gguf file")
    p.add_argument("--jittor_base_weights", help="converted base .pkl (for --medusa_weights)")
    p.add_argument("--medusa_weights", help="FasterDecoding medusa_lm_head.pt / .safetensors (or folder)")
    p.add_argument("--output", help="output .pkl (base) or .jtr (heads)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help="stored dtype of base weights (heads are always fp32)")
    p.add_argument("--format", choices=["pkl", "safetensors"],
                   help="file format: pkl (a dict of numpy arrays, read without running code) or safetensors; "
                        "default: from --output's suffix, else pkl (heads: .jtr)")
    args = p.parse_args(argv)
    if args.output and args.format:
        wanted = {"pkl": (".pkl", ".jtr"), "safetensors": (".safetensors",)}[args.format]
        if Path(args.output).suffix not in wanted:
            raise UsageError(f"--output {args.output} does not end in {' or '.join(wanted)} (--format {args.format})")
    return args


def convert_heads(args):
    if not args.output:
        raise UsageError("--medusa_weights needs --output FILE.jtr")
    base = args.jittor_base_weights or args.base_model_path
    lm_head = weights.load_model(base, "float32").lm_head_t() if base else None
    heads = head_io.import_fasterdecoding_heads(args.medusa_weights, lm_head)
    out = head_io.save_heads(heads, args.output)
    cfg = heads.config
    print(f"wrote {out}: {cfg.num_heads} heads x {cfg.num_layers} layers, share_lm_head={cfg.share_lm_head}, "
          f"{heads.num_parameters():,} parameters")


def main(argv=None):
    args = parse_args(argv)
    if args.medusa_weights:
        return convert_heads(args)
    if args.base_model_path is None:
        if args.output:
            out = weights.convert(weights.default_gguf_path(), args.output, args.dtype)
        elif args.format == "safetensors":
            raise UsageError("--format safetensors needs --output FILE.safetensors (in a folder of its own)")
        else:
            out = weights.ensure_default_model(args.dtype, verbose=False)
    else:
        if not args.output:
            raise UsageError("--base_model_path needs --output FILE.pkl")
        out = weights.convert(args.base_model_path, args.output, args.dtype)
    print(f"wrote {Path(out).resolve()} (+ config.json and tokenizer files in {Path(out).resolve().parent})")


if __name__ == "__main__":
    cli.start(main)
