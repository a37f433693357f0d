"""Real processes interrupted (SIGINT, SIGTERM) or killed (SIGKILL) mid-run: nothing finished is
lost, nothing is written twice, and the resumed result equals an uninterrupted run.

Each test starts the command as a user would, waits until it has written some work, signals it,
then resumes it and compares with a run that was never interrupted (greedy, so deterministic).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, chat_file

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
pytestmark = pytest.mark.e2e   # whole commands, signalled and resumed


def start(*argv):
    """The command in the background; its stderr goes to a file (a pipe nobody reads could fill)."""
    import tempfile

    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=log, text=True)
    proc.log = log
    return proc


def run(*argv):
    out = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def signal_when(proc, ready, sig, timeout=300):
    """Send `sig` once ready() is true -> (returncode, stderr). Fails if the run ends first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "finished before the signal"
        assert time.time() < deadline, "timed out waiting for work to be written"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    proc.log.seek(0)
    return proc.returncode, proc.log.read()


def json_samples(path):
    try:
        return len(json.loads(Path(path).read_text())["samples"])
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


@pytest.fixture(scope="module")
def heads_file(tiny_pkl, tmp_path_factory):
    from medusa.heads.families import HeadConfig, build_heads
    from medusa.heads.io import save_heads
    from medusa.runtime.backend import jt

    jt.set_global_seed(0)
    heads = build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=320))
    return save_heads(heads, tmp_path_factory.mktemp("int-heads") / "heads.jtr")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_benchmark_resumes_after_an_interrupt(tiny_pkl, heads_file, tmp_path, sig):
    argv = ["test_medusa_benchmark.py", "--jittor_base_weights", tiny_pkl("llama"), "--medusa_weights", heads_file,
            "--num_samples", "12", "--max_new_tokens", "48", "--warmup_tokens", "4", "--no_plot"]
    cut, full = tmp_path / "cut.json", tmp_path / "full.json"
    code, err = signal_when(start(*argv, "--output", cut), lambda: json_samples(cut) >= 2, sig)
    n = json_samples(cut)
    assert 2 <= n < 12
    if sig == signal.SIGINT:
        assert code == 130 and f"--resume --output {cut}" in err, err[-2000:]
    again = subprocess.run([sys.executable, *map(str, argv), "--output", cut], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    assert json_samples(cut) == n                                    # refused: nothing replaced
    run(*argv, "--output", cut, "--resume")
    run(*argv, "--output", full)
    resumed, whole = (json.loads(p.read_text())["samples"] for p in (cut, full))
    assert [s["id"] for s in resumed] == [s["id"] for s in whole]    # each sample once, in order
    for a, b in zip(resumed, whole):
        assert [t["medusa"]["output_ids"] for t in a["turns"]] == [t["medusa"]["output_ids"] for t in b["turns"]]
        assert [t["base"]["output_ids"] for t in a["turns"]] == [t["base"]["output_ids"] for t in b["turns"]]


def test_distillation_resumes_after_sigkill_and_a_torn_line(tiny_pkl, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "category": "c", "prompt": f"how are you {i} the cat"}) + "\n"
                               for i in range(40)))
    argv = ["-m", "medusa", "distill", "--base_model_path", tiny_pkl("qwen2"), "--prompts", prompts,
            "--max_new_tokens", "24", "--batch_size", "2"]
    cut, full = tmp_path / "cut.jsonl", tmp_path / "full.jsonl"
    lines = lambda: len(cut.read_text().splitlines()) if cut.exists() else 0   # noqa: E731
    signal_when(start(*argv, "--output", cut), lambda: lines() >= 4, signal.SIGKILL)
    with open(cut, "a") as f:
        f.write('{"id": 999, "conversations": [{"from": "hu')   # what a kill in the middle of a write leaves
    out = run(*argv, "--output", cut)
    assert "removed a partial last line" in out.stderr
    run(*argv, "--output", full)
    records = [json.loads(line) for line in cut.read_text().splitlines()]
    whole = {r["id"]: r for r in map(json.loads, full.read_text().splitlines())}
    assert sorted(r["id"] for r in records) == list(range(40))      # each prompt once, the torn line gone
    assert all(r == whole[r["id"]] for r in records)


def test_training_saves_at_sigterm_and_resumes_to_the_same_weights(tiny_pkl, tmp_path):
    from medusa.heads.io import load_heads

    data = chat_file(tmp_path / "chat.jsonl")
    argv = ["train_ddp.py", "--jittor_base_weights", tiny_pkl("qwen2"), "--data_path", data,
            "--medusa_num_heads", "3", "--epochs", "30", "--batch_size", "4", "--lr", "0.01", "--max_length", "64",
            "--val_ratio", "0.2", "--device", "cpu", "--save_every", "0", "--cache_dir", tmp_path / "cache"]
    cut, full = tmp_path / "cut", tmp_path / "full"
    metrics = cut / "metrics.jsonl"
    code, err = signal_when(start(*argv, "--output_dir", cut),
                            lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, signal.SIGTERM)
    assert code == 130 and "--resume" in err, err[-2000:]
    state = json.loads(str(np.load(cut / "last_state.npz")["meta"]))
    assert 0 < state["step"] < 120                                   # saved at the signal, between epochs
    changed = subprocess.run([sys.executable, *map(str, argv), "--output_dir", cut, "--resume", "--lr", "0.5"],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "--lr 0.01 (now 0.5)" in changed.stderr
    fresh = subprocess.run([sys.executable, *map(str, argv), "--output_dir", cut], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 2 and "holds a run already" in fresh.stderr
    run(*argv, "--output_dir", cut, "--resume")
    run(*argv, "--output_dir", full)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(set(steps))                              # no step logged twice
    a, b = load_heads(cut / "last.jtr"), load_heads(full / "last.jtr")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-4, atol=1e-6, err_msg=n)
