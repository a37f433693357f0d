"""One writer per run folder (runtime/locks.py) and per-process temporary names (files.atomic_write):
a second process is refused at once with the holder's pid, a dead holder's lock is taken over,
and the commands (train, bench, distill) take the lock before their model loads."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from support import ROOT

from medusa.runtime import files, locks

HOLD = textwrap.dedent("""
    import sys, time
    from medusa.runtime import locks
    lock = locks.hold_folder(sys.argv[1], "--output_dir")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def holder(folder, seconds=60):
    """Another process holding `folder`'s lock, once it said so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_at_once_and_may_go_on_after_the_first_ends(tmp_path):
    proc = holder(tmp_path / "run")
    try:
        start = time.time()
        with pytest.raises(locks.LockedError) as refused:
            locks.hold_folder(tmp_path / "run", "--output_dir")
        assert time.time() - start < 1
        message = str(refused.value)
        assert f"pid {proc.pid}" in message and str(tmp_path / "run") in message and "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    # killed: the kernel dropped its flock, the lock file with its pid stays behind -> taken over
    assert (tmp_path / "run" / locks.FOLDER_LOCK).read_text().strip() == str(proc.pid)
    with locks.hold_folder(tmp_path / "run") as lock:
        assert (tmp_path / "run" / locks.FOLDER_LOCK).read_text().strip() == str(os.getpid())
        assert lock.held
    assert not (tmp_path / "run" / locks.FOLDER_LOCK).exists()      # a clean release deletes it


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    out = tmp_path / "results.json"
    out.with_name("results.json.lock").write_text("999999999\n")     # no such process
    lock = locks.hold_file(out)
    assert "left by pid 999999999" in capsys.readouterr().err
    lock.release()
    lock.release()                                                  # idempotent
    with locks.hold_file(out):
        assert capsys.readouterr().err == ""                        # a released lock leaves nothing to warn of


def test_one_process_may_hold_its_own_lock_twice(tmp_path):
    first = locks.hold_folder(tmp_path)
    second = locks.hold_folder(tmp_path)
    second.release()
    assert (tmp_path / locks.FOLDER_LOCK).is_file()                 # still held by `first`
    first.release()
    assert not (tmp_path / locks.FOLDER_LOCK).exists()


def test_atomic_write_uses_a_temporary_name_of_its_own_and_cleans_up_on_failure(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "last.jtr"
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    files.atomic_write(target, b"one")
    assert seen == [f"last.jtr.{os.getpid()}.tmp"] and target.read_bytes() == b"one"

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(OSError) as failed:
        files.atomic_write(target, b"two")
    assert failed.value.errno == errno.EROFS and failed.value.filename == str(target)
    assert target.read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["last.jtr"]


def test_atomic_write_on_a_full_disk_names_the_path(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")      # what a failed write() raises: no file name

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as failed:
        files.atomic_write(tmp_path / "x.npz", b"data")
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(tmp_path / "x.npz")


# ---------------------------------------------------------------- through the commands
def test_a_second_training_into_one_folder_is_refused_in_under_two_seconds(tiny_pkl, tmp_path, capsys):
    """Two `medusa train` into one folder at once: the first (a process of its own) trains, the
    second is refused before its model loads (it took 8-10 s when only the finished state file
    told them apart) with the first one's pid, and the folder holds the first run alone."""
    from support import chat_file

    from medusa import cli
    from medusa.cli import train as train_cmd

    out = tmp_path / "run"
    argv = ["--jittor_base_weights", str(tiny_pkl("qwen2")), "--device", "cpu",
            "--data_path", str(chat_file(tmp_path / "chat.jsonl")), "--output_dir", str(out),
            "--cache_dir", str(tmp_path / "cache"), "--medusa_num_heads", "2", "--epochs", "1",
            "--batch_size", "4", "--max_length", "64"]
    first = subprocess.Popen([sys.executable, "-m", "medusa", "train", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lock_file = out / locks.FOLDER_LOCK
    deadline = time.time() + 60
    while not (lock_file.is_file() and lock_file.read_text().strip()) and first.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    capsys.readouterr()
    start = time.time()
    with pytest.raises(SystemExit) as stop:
        cli.run(train_cmd.main, argv + ["--resume"])
    took = time.time() - start
    err = capsys.readouterr().err.strip().splitlines()
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert stop.value.code == 2 and took < 2, took
    assert len(err) == 1 and f"pid {first.pid}" in err[0] and str(out) in err[0], err
    assert (out / "best.jtr").is_file() and not lock_file.exists() and not list(out.glob("*.tmp"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_bench_and_distill_refuse_a_held_output(tmp_path):
    from support import chat_file

    from medusa.bench import benchmark
    from medusa.training import distill

    results = tmp_path / "results.json"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 1, "category": "x", "prompt": "hi"}\n')
    replies = tmp_path / "replies.jsonl"
    hold = textwrap.dedent("""
        import sys, time
        from medusa.runtime import locks
        held = locks.hold_file(sys.argv[1]), locks.hold_file(sys.argv[2])   # kept: a dropped Lock is released
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", hold, str(results), str(replies)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    try:
        bench = benchmark.Bench(args=benchmark.BenchArgs(data_path=str(chat_file(tmp_path / "chat.jsonl")),
                                                         output=str(results), plot=False))
        with pytest.raises(locks.LockedError, match=f"--output {results} is being written by another process "
                                                    f"\\(pid {proc.pid}\\)"):
            benchmark.run(bench)
        with pytest.raises(locks.LockedError, match=f"pid {proc.pid}"):
            distill.distill(distill.DistillArgs(prompts=str(prompts), output=str(replies)))
    finally:
        proc.kill()
        proc.wait()
