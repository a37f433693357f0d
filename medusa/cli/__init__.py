"""The command line: one entry point, `medusa COMMAND [flags]` (or `python -m medusa COMMAND`), one
module per command in this package, and the error boundary every command shares.

    args = cli.parse(argv, (ModelArgs, GenerationSettings, MyArgs), __doc__)   # validated dataclasses
    cli.start(main)                                                            # user errors: one line, exit 2

A `UsageError` (runtime/errors.py) anywhere, an OSError of the machine (a full or read-only disk,
a missing folder) and a file that cannot be decoded become one line on stderr and exit status 2
(`run`); `--debug` shows the traceback instead, and every other exception, a bug, keeps it.
What a command loads is resolved and checked first by app/loading.py (`loading.plan`, then
`loading.load`).
"""
import argparse
import errno
import importlib
import json
import pickle
import sys
import zipfile

from medusa.runtime import options
from medusa.runtime.errors import Interrupted, UsageError

# old spelling -> new one; the old one still works and warns
RENAMED = {"--max_new_token": "--max_new_tokens", "--base_dtype": "--dtype"}


def renamed(argv):
    """argv with the old spellings of RENAMED in today's (each warns)."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in RENAMED:
            print(f"warning: {name} is deprecated, use {RENAMED[name]}", file=sys.stderr)
            arg = RENAMED[name] + eq + value
        out.append(arg)
    return out


def parse(argv, types, description=None):
    """Parse argv into one instance of each dataclass in `types` (a tuple), validated."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(types, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    *out, unknown = parser.parse_args_into_dataclasses(renamed(list(sys.argv[1:] if argv is None else argv)),
                                                       return_remaining_strings=True)
    if unknown:
        raise UsageError(f"{parser.prog}: unknown flag {unknown[0]!r} (--help lists the flags)")
    return tuple(out[:len(types)])


def run(main, argv=None):
    """Call main(argv) inside the error boundary every command shares: what a user can fix (our
    UsageError, an OSError such as a full or read-only disk, a file that cannot be decoded)
    prints `error: ...` as one line and exits 2; `--debug` shows the traceback instead, and any
    other exception (a bug) keeps it. An Interrupted run prints how to continue and exits 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options.current()           # a bad $MEDUSA_* value is an error before anything loads
        return main(argv)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        message = user_error(e)
        if message is None or "--debug" in argv:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)


# errno -> what to do about it
OS_ADVICE = {
    errno.ENOSPC: "free space on that disk or write somewhere else, then run again",
    errno.EDQUOT: "free space within your quota or write somewhere else, then run again",
    errno.EROFS: "that file system is read-only: write to a folder on a writable disk",
    errno.EACCES: "you may not write or read there: change its permissions or choose another path",
    errno.EPERM: "you may not write or read there: change its permissions or choose another path",
    errno.ENOENT: "check the path (was a folder removed while the command ran?)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "that path is a folder: give a file name",
    errno.EEXIST: "a file of that name is in the way of a folder: move it or choose another path",
    errno.EIO: "the disk failed to read or write: check the disk (dmesg) and run again",
    errno.ENAMETOOLONG: "give a shorter path",
    errno.EMFILE: "too many open files: raise `ulimit -n` and run again",
}
# what a damaged or foreign file raises while it is read
DECODE_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError)


def user_error(e: Exception):
    """The one-line message of an error the user can fix, None for a bug."""
    if isinstance(e, UsageError):
        return str(e)
    if isinstance(e, OSError) and e.errno in OS_ADVICE:
        where = e.filename2 or e.filename       # os.replace(tmp, path): the path is the second
        return f"{where or 'a file this command reads or writes'}: {e.strerror}: {OS_ADVICE[e.errno]}"
    if isinstance(e, DECODE_ERRORS):
        return (f"a file this command reads is damaged or not what it should be ({type(e).__name__}: {e}): "
                "check or rebuild it (--debug shows which file)")
    return None


def start(main):
    """A command's `if __name__ == "__main__"`: run(main) and exit with its status (an int main
    returns, else 0)."""
    code = run(main)
    sys.exit(code if isinstance(code, int) else 0)


# command -> (module of medusa.cli, what it does); each module has main(argv)
COMMANDS = {
    "generate": ("generate", "one reply, plain or with Medusa"),
    "bench": ("bench", "plain against Medusa decoding on the same prompts (test_medusa_benchmark.py)"),
    "train": ("train", "train draft heads: --head_family medusa|rnn|moe (train_ddp.py, train_rnn.py, train_moe.py)"),
    "convert": ("convert", "convert base weights or FasterDecoding heads (weight_convert.py)"),
    "distill": ("distill", "self-distillation data: the base model's own replies to prompts"),
    "tune": ("tune", "pick the Medusa tree for given heads on this machine"),
    "vocab": ("vocab", "reduce the output vocabulary (build, slice) or the heads' draft vocabulary (draft)"),
    "vocab-bench": ("vocab_bench", "a full and a reduced-vocabulary model side by side"),
    "compare": ("compare", "results files side by side, as a table or a chart"),
    "heads": ("heads", "store heads in another dtype"),
    "train-report": ("train_report", "validation curves of training runs"),
    "prompt-gen": ("prompt_gen", "synthetic chat prompts"),
    "self-instruct": ("self_instruct", "new instruction prompts from seed instructions"),
    "cabin-prompts": ("cabin_prompts", "the in-cabin structured-output prompt set"),
    "setup-gpu": ("setup_gpu", "patch Jittor for CUDA 13 and check it on this GPU"),
    "gpu-bench": ("gpu_bench", "the GPU benchmark: Jittor against PyTorch with CUDA graphs"),
    "step-profile": ("step_profile", "where a greedy Medusa step's time goes, stage by stage, on this machine"),
    "compile-check": ("compile_check", "compile every CUDA kernel source with nvcc (no GPU needed)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return f"usage: medusa COMMAND [flags]   (medusa COMMAND --help for its flags)\n\ncommands:\n{rows}\n"


def main(argv=None):
    """`medusa COMMAND ...`: hand the flags to the command's own main."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", end="", file=sys.stderr)
        return 2
    command = importlib.import_module(f"medusa.cli.{COMMANDS[name][0]}")
    sys.argv[0] = f"medusa {name}"
    return run(command.main, rest)


def console():
    """The `medusa` console script."""
    code = main()
    sys.exit(code if isinstance(code, int) else 0)
