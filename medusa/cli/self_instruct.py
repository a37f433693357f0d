"""`medusa self-instruct`: new instruction prompts from seed instructions (training/self_instruct.py)."""
import argparse
import json
from pathlib import Path

from medusa import cli
from medusa.runtime.errors import UsageError
from medusa.training.self_instruct import DEFAULT_EXCLUDE, DEFAULT_SEEDS, load_seeds, run
from medusa.training.self_instruct import __doc__ as self_instruct_doc


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=self_instruct_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="JSONL of prompts to append to (resumable)")
    p.add_argument("--prompt_ids_output", default="", help="also their chat-template ids, JSONL {id, prompt_ids}")
    p.add_argument("--num", type=int, default=12000, help="prompts to make")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=str(DEFAULT_SEEDS), help='JSONL of {"category", "prompt"}: the few-shot pool')
    p.add_argument("--exclude", nargs="*", default=[str(x) for x in DEFAULT_EXCLUDE],
                   help="prompt files (evaluation, tuning) nothing may copy")
    p.add_argument("--shots", type=int, default=6, help="seed requests shown per candidate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--near", type=float, default=0.6, help="word-trigram Jaccard at which a prompt counts as a copy")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=256, help="candidates a round")
    p.add_argument("--max_rounds", type=int, default=1000, help="give up after this many rounds in one run")
    p.add_argument("--first_id", type=int, default=100000, help="id of the first prompt (keep ids apart from other sets)")
    p.add_argument("--model", default="", help="base weights: .gguf, converted .pkl or HF folder (empty: the embedded default)")
    p.add_argument("--tokenizer", default="", help="folder of tokenizer.json (empty: the --model's folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    if args.num < 1 or args.shots < 1 or args.batch_size < 1 or args.max_new_tokens < 2 or args.max_rounds < 1:
        raise UsageError("--num, --shots, --batch_size and --max_rounds must be >= 1, --max_new_tokens >= 2")
    if not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0 (greedy would write the same request every time), got {args.temperature}")
    if not 0 < args.near <= 1:
        raise UsageError(f"--near must be in (0, 1], got {args.near}")
    for path in [args.seeds, *args.exclude]:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file (--seeds / --exclude)")
    if args.model and not Path(args.model).exists():
        raise UsageError(f"--model {args.model}: no such file or folder")
    if args.model or args.tokenizer:
        from medusa.model.weights import tokenizer_folder

        tokenizer_folder(args.tokenizer or args.model)     # a one-line error without tokenizer.json
    return args

def main(argv=None):
    args = parse_args(argv)
    load_seeds(args.seeds)                  # bad seeds fail before the model loads
    stats = run(args)
    print(json.dumps({**stats, "output": args.output}))


if __name__ == "__main__":
    cli.start(main)
