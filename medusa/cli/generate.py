"""`python -m medusa generate`: one reply from the command line, plain or with Medusa.

    python -m medusa generate --prompt "Hello" --max_new_tokens 32 --json
    python -m medusa generate --prompt "..." --chat --medusa_weights heads.jtr --medusa_choices 8_node

With no model arguments it uses the embedded default SmolLM2-135M-Instruct (converted on first
use). `--medusa_weights` switches to Medusa tree decoding (medusa/decoding/). Every flag is
checked before the model loads; a bad one is a one-line error with exit status 2.
"""
import json
from dataclasses import dataclass, field

from medusa import cli
from medusa.app import loading
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.data.samples import chat_prompt_ids
from medusa.runtime.errors import UsageError


@dataclass
class GenerateArgs:
    prompt: str = field(metadata={"help": "the text to continue (with --chat: the user's message)"})
    chat: bool = field(default=False, metadata={"help": "wrap the prompt in the model's chat template"})
    json: bool = field(default=False, metadata={"help": 'print {"prompt_ids", "output_ids", "text", ...}'})

    def __post_init__(self):
        if not self.prompt.strip():
            raise UsageError("--prompt is empty: give some text to continue")
        try:
            self.prompt.encode("utf-8")
        except UnicodeEncodeError as e:        # bytes the shell passed that are not UTF-8
            raise UsageError(f"--prompt is not valid UTF-8 (byte {e.start} of it): pass UTF-8 text") from None


def encode_prompt(tokenizer, prompt, chat):
    if chat:
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
    return list(tokenizer(prompt)["input_ids"])


def run_medusa(setup, prompt_ids, settings) -> dict:
    from medusa.decoding.loop import medusa_generate

    result = medusa_generate(setup.model, setup.heads, prompt_ids, settings.max_new_tokens, setup.choices,
                             setup.eos_ids, settings.sampling())
    n = len(result.output_ids)
    return {"output_ids": result.output_ids, "accept_lengths": result.accept_lengths,
            "tokens_per_second": n / max(result.wall_time, 1e-9),
            "compression_ratio": n / max(result.steps, 1),  # new tokens / decoding steps, as in the benchmark
            "times": result.times}


def run_plain(setup, prompt_ids, settings) -> dict:
    from medusa.decoding.core import generate

    result = generate(setup.model, prompt_ids, settings.max_new_tokens, setup.eos_ids, settings.sampling())
    return {"output_ids": result.output_ids,
            "tokens_per_second": len(result.output_ids) / max(result.wall_time, 1e-9)}


def main(argv=None):
    margs, settings, args = cli.parse(argv, (ModelArgs, GenerationSettings, GenerateArgs), __doc__)
    plan = loading.plan(margs, settings, heads="optional")
    prompt_ids = encode_prompt(plan.tokenizer, args.prompt, args.chat)
    loading.check_prompt_fits(plan, prompt_ids, settings.max_new_tokens, "--prompt")
    setup = loading.load(plan)
    record = {"prompt_ids": prompt_ids, "settings": settings.__dict__}
    record.update((run_medusa if setup.heads is not None else run_plain)(setup, prompt_ids, settings))
    record["text"] = setup.tokenizer.decode(record["output_ids"], skip_special_tokens=True)
    print(json.dumps(record) if args.json else record["text"])


if __name__ == "__main__":
    cli.start(main)
