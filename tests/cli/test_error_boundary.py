"""The error boundary every command shares (cli.run): our errors, the machine's OSErrors (full or
read-only disk, missing folder) and files that cannot be decoded are one line `error: ...` with
the path and what to do, exit 2; a bug keeps its traceback, and --debug shows every traceback."""
import ast
import errno
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, tiny_args

from medusa import cli
from medusa.cli import prompt_gen
from medusa.cli import train as train_cmd
from medusa.runtime.errors import UsageError
from medusa.training import state as run_state


def one_line_error(capsys, call, argv=()):
    """Run `call` in cli.run -> its one `error:` line (asserting exit 2 and no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.run(call, list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("\r", " "))]
    errors = [line for line in err if "error:" in line]
    assert stop.value.code == 2 and len(errors) == 1, err
    return errors[0][errors[0].index("error:"):]


def raising(e):
    def main(argv):
        raise e
    return main


@pytest.mark.parametrize("error, fragments", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/last.jtr"),
     ["/data/run/last.jtr: No space left on device", "free space"]),
    (OSError(errno.EROFS, "Read-only file system", "/data/x.1.tmp", None, "/data/x.json"),
     ["/data/x.json: Read-only file system", "write to a folder on a writable disk"]),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), ["/data/out: Permission denied", "permissions"]),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/gone/metrics.jsonl"),
     ["/data/gone/metrics.jsonl: No such file or directory", "check the path"]),
    (json.JSONDecodeError("Expecting value", "{oops", 1), ["JSONDecodeError: Expecting value", "--debug shows"]),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ["UnicodeDecodeError", "check or rebuild it"]),
    (zipfile.BadZipFile("File is not a zip file"), ["BadZipFile: File is not a zip file"]),
    (UsageError("--flag x:\n  bad"), ["error: --flag x: bad"]),
])
def test_user_errors_are_one_line_and_exit_2(error, fragments, capsys):
    line = one_line_error(capsys, raising(error))
    assert all(f in line for f in fragments), line


def test_a_bug_keeps_its_traceback_and_debug_shows_ours(capsys):
    with pytest.raises(ZeroDivisionError):
        cli.run(raising(ZeroDivisionError("a bug")), [])
    with pytest.raises(OSError):                   # an OSError of no known kind, naming no file: a bug's
        cli.run(raising(OSError(errno.ECONNRESET, "Connection reset by peer")), [])
    for error in (UsageError("bad"), OSError(errno.ENOSPC, "No space left on device", "x")):
        with pytest.raises(type(error)):
            cli.run(raising(error), ["--debug"])


# ---------------------------------------------------------------- through the commands
def test_a_full_disk_while_writing_prompts(tmp_path, monkeypatch, capsys):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")        # write() names no file

    out = tmp_path / "prompts.jsonl"
    monkeypatch.setattr(Path, "write_text", full)
    line = one_line_error(capsys, prompt_gen.main, ["--output", str(out), "--num", "3"])
    assert "No space left on device" in line and "free space" in line


def test_a_path_through_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    out = subprocess.run([sys.executable, "-m", "medusa", "prompt-gen", "--output", str(tmp_path / "file" / "p.jsonl"),
                          "--num", "3"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'file'}"), out.stderr


def test_a_results_file_that_is_not_utf8(tmp_path, capsys):
    from medusa.cli import compare

    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    line = one_line_error(capsys, compare.main, [str(tmp_path / "bad.json")])
    assert "UnicodeDecodeError" in line


def train_argv(args):
    return ["--jittor_base_weights", args.jittor_base_weights, "--data_path", args.data_path, "--device", "cpu",
            "--output_dir", str(args.out_dir()), "--cache_dir", args.cache_dir, "--medusa_num_heads", "3",
            "--epochs", "1", "--batch_size", "4", "--max_length", "64", "--max_steps", "2"]


def test_training_into_a_read_only_folder_and_a_damaged_state(tiny_pkl, tmp_path, monkeypatch, capsys):
    """Root ignores chmod: the read-only file system is os.replace failing as it would there."""
    args = tiny_args(tiny_pkl, tmp_path)
    real = os.replace

    def read_only(src, dst):
        if Path(dst).parent == args.out_dir():
            raise OSError(errno.EROFS, "Read-only file system", str(src), None, str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    def run(argv):
        return train_cmd.main(argv, family="medusa")
    line = one_line_error(capsys, run, train_argv(args))
    assert f"{args.out_dir() / 'train_args.json'}: Read-only file system" in line, line
    monkeypatch.setattr(os, "replace", real)
    assert not list(args.out_dir().glob("*.tmp"))
    cli.run(run, train_argv(args))                                      # a run that saves a state
    saved = args.out_dir() / run_state.STATE_NAME
    good = saved.read_bytes()
    saved.write_bytes(good[:len(good) // 2])                            # truncated
    line = one_line_error(capsys, run, train_argv(args) + ["--resume"])
    assert f"--resume: cannot read {saved} (BadZipFile" in line and "it is damaged" in line, line
    np.savez(saved, meta=np.array(json.dumps({"step": 1})))             # an npz of something else
    line = one_line_error(capsys, run, train_argv(args) + ["--resume"])
    assert f"{saved} is not a training state" in line, line


def test_a_damaged_results_file_on_resume(tmp_path):
    from medusa.app import results

    path = tmp_path / "r.json"
    for text in ('{"config": {"greedy": true}, "samp', '[1, 2]'):
        path.write_text(text)
        with pytest.raises(UsageError, match=f"{path}: not a .*results file.*--overwrite"):
            results.start_results(path, {"greedy": True}, resume=True)


# ---------------------------------------------------------------- every command goes through it
def main_block_calls(path):
    """The calls in `if __name__ == "__main__":` of a file, as source text."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return ast.unparse(node)
    return None


SCRIPTS = ["weight_convert.py", "train_ddp.py", "train_rnn.py", "train_moe.py", "test_medusa_benchmark.py"]
COMMAND_FILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "medusa" / "cli").glob("*.py")
                       if p.name != "__init__.py")


@pytest.mark.parametrize("name", SCRIPTS + COMMAND_FILES)
def test_every_command_runs_inside_the_boundary(name):
    block = main_block_calls(ROOT / name)
    assert block is not None and "cli.start(" in block, block
