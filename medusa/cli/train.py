"""`medusa train` (train_ddp.py, train_rnn.py, train_moe.py): train draft heads (training/trainer.py).

The flags are TrainArgs's fields, parsed by cli.parse like every command's: the base model ones
(--base_model_path, --jittor_base_weights, --device, --dtype) are BaseModelArgs's, with the same
meaning and default as in generate or bench. The MoE flags exist only for the moe family; a
--preset fills in only the flags not on the command line.
"""
import dataclasses
import sys

from medusa import cli
from medusa.runtime.errors import UsageError
from medusa.training.args import MOE_ONLY, PRESETS, TrainArgs
from medusa.training.trainer import Trainer

FAMILIES = ("medusa", "rnn", "moe")
DESCRIPTION = """Train {family} draft heads on a frozen base model
(effective batch = batch_size x gradient_accumulation_steps x world_size).
`medusa train` takes --head_family medusa|rnn|moe (default medusa);
train_ddp.py, train_rnn.py and train_moe.py fix the family."""
NOT_FLAGS = ("family",)
# flags of other commands a user may try here, and why training has none
NOT_FOR_TRAINING = {
    "medusa_weights": "training makes heads; to start from saved ones pass --init_heads",
    "draft_vocab": "the draft vocabulary is chosen where the trained heads decode: generate, bench",
    "draft": "the draft source is chosen where the trained heads decode: generate, bench",
    "retrieval_nodes": "retrieval drafting needs no training: pass it to generate or bench",
}


def flags_of(family):
    """The command line of `family`: a dataclass of TrainArgs's fields (help and defaults
    included) but `family`, with the MoE ones only for moe."""
    keep = [f for f in dataclasses.fields(TrainArgs)
            if f.name not in NOT_FLAGS and (family == "moe" or f.name not in MOE_ONLY)]
    return dataclasses.make_dataclass(
        "TrainFlags", [(f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)) for f in keep])


def old_spellings(argv, flags):
    """argv with the old spellings in today's: cli.RENAMED's (--base_dtype, warns), and argparse's
    --no-NAME of a boolean flag (--no-cache_hidden), which cli.parse spells --no_NAME."""
    bools = {f.name for f in dataclasses.fields(flags) if f.type is bool}
    return [f"--{arg[5:]}=false" if arg.startswith("--no-") and arg[5:] in bools else arg
            for arg in cli.renamed(argv)]


def given_flags(flags, argv):
    """The fields given on the command line; a flag training does not have is a UsageError."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(flags, add_help=False)      # cli.parse answers --help
    unset = object()                                     # not a str: argparse converts str defaults
    parser.set_defaults(**{f.name: unset for f in dataclasses.fields(flags)})
    given, unknown = parser.parse_known_args(argv)
    for arg in unknown:
        name = arg.partition("=")[0]
        if not name.startswith("--") or name in ("--debug", "--help"):
            continue
        key = name[2:].replace("-", "_")
        if key in NOT_FOR_TRAINING:
            raise UsageError(f"{name}: not a training flag ({NOT_FOR_TRAINING[key]})")
        if key in MOE_ONLY:
            raise UsageError(f"{name}: a flag of the moe family only (medusa train --head_family moe, train_moe.py)")
        raise UsageError(f"{name}: no such flag (--help lists them)")
    return {k for k, v in vars(given).items() if v is not unset}


def parse_args(argv=None, family="medusa") -> TrainArgs:
    """TrainArgs of the command line, the preset applied to the flags not given, validated."""
    flags = flags_of(family)
    argv = old_spellings(list(sys.argv[1:] if argv is None else argv), flags)
    given = given_flags(flags, argv)
    (parsed,) = cli.parse(argv, (flags,), DESCRIPTION.format(family=family))
    values = dataclasses.asdict(parsed)
    values.update({k: v for k, v in PRESETS.get(values["preset"], {}).items() if k not in given})
    return TrainArgs(family=family, **values)


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
    best, best_file = trainer.fit(), args.out_dir() / "best.jtr"
    if trainer.rank == 0 and best_file.is_file():        # a run that ends by an error saves no best
        print(f"best val loss {best:.4f}; heads in {best_file}" if trainer.val_set else f"heads in {best_file}")
    return trainer


if __name__ == "__main__":
    cli.start(main)
