"""`medusa distill`: self-distillation data, the base model's own replies to prompts (training/distill.py)."""
from medusa import cli
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.training.distill import DistillArgs, distill
from medusa.training.distill import __doc__ as distill_doc


def main(argv=None):
    margs, settings, args = cli.parse(argv, (ModelArgs, GenerationSettings, DistillArgs), distill_doc)
    stats = distill(args, margs, settings)
    print(f"wrote {stats['replies']} replies ({stats['new_tokens']} tokens, {stats['seconds']} s) to {args.output}")


if __name__ == "__main__":
    cli.start(main)
