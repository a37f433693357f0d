"""`medusa train` (train_ddp.py, train_rnn.py, train_moe.py): train draft heads (training/trainer.py)."""
import argparse
import copy
import dataclasses
import sys

from medusa import cli
from medusa.runtime.errors import UsageError
from medusa.training.trainer import (
    HELP,
    MOE_ONLY,
    PRESETS,
    TrainArgs,
    Trainer,
    check_args,
)


def _explicit_flags(parser, argv):
    """The dests given on the command line (a copy of the parser with every default suppressed)."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(sys.argv[1:] if argv is None else argv)))

def parse_args(argv=None, family="medusa") -> TrainArgs:
    defaults = TrainArgs(family=family)
    p = argparse.ArgumentParser(description=f"Train {family} draft heads on a frozen base model "
                                            f"(effective batch = batch_size x gradient_accumulation_steps x world_size).")
    for f in dataclasses.fields(TrainArgs):
        if f.name == "family" or (f.name in MOE_ONLY and family != "moe"):
            continue
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=value, help=HELP[f.name])
        else:
            p.add_argument(f"--{f.name}", type=type(value), default=value,
                           help=f"{HELP[f.name]} (default: %(default)r)")
    given = vars(p.parse_args(argv))
    explicit = _explicit_flags(p, argv)
    preset = given["preset"]
    if preset and preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}: unknown; known: {', '.join(PRESETS)}")
    given.update({k: v for k, v in PRESETS.get(preset, {}).items() if k not in explicit})
    args = dataclasses.replace(defaults, **given)
    check_args(args)
    return args

FAMILIES = ("medusa", "rnn", "moe")


def take_family(argv):
    """(--head_family's value, the other flags): the family decides which flags exist."""
    argv = list(sys.argv[1:] if argv is None else argv)
    family = "medusa"
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name == "--head_family":
            family = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i:i + (1 if eq else 2)]
            break
    if family not in FAMILIES:
        raise UsageError(f"--head_family {family!r}: give one of {', '.join(FAMILIES)}")
    return family, argv


def main(argv=None, family=None):
    """`medusa train --head_family rnn ...`; the top-level train_*.py scripts pass their family."""
    if family is None:
        family, argv = take_family(argv)
    args = parse_args(argv, family)
    trainer = Trainer(args)
    best = trainer.fit()
    if trainer.rank == 0:
        print(f"best val loss {best:.4f}; heads in {args.out_dir() / 'best.jtr'}")
    return trainer


if __name__ == "__main__":
    cli.start(main)
