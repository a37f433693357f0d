"""Training killed by SIGKILL between saves (mid-epoch, after a metric line the state does not
cover), then `medusa train --resume`: the same heads, state and metrics as a run never killed,
and no metric step twice in metrics.jsonl (state.drop_metrics_after).

The killed run is a real process that SIGKILLs itself right after it logged the metric line of
KILL_STEP (deterministic, unlike a kill timed from outside): no handler, finally or atexit runs."""
import json
import os
import subprocess
import sys

import numpy as np
from support import ROOT, chat_file

from medusa.cli import train
from medusa.heads.io import load_heads

KILL_STEP = 10      # a metric line (every 10 steps) inside the second epoch (6 steps an epoch)


def flags(tiny_pkl, tmp_path):
    return ["--jittor_base_weights", str(tiny_pkl("qwen2")), "--data_path", str(chat_file(tmp_path / "chat.jsonl")),
            "--medusa_num_heads", "3", "--epochs", "2", "--batch_size", "3", "--lr", "0.01", "--max_length", "64",
            "--val_ratio", "0.2", "--device", "cpu", "--save_every", "0", "--cache_dir", str(tmp_path / "cache")]


def killed_run(argv):
    """`medusa train argv` in a process that SIGKILLs itself after logging step KILL_STEP."""
    script = f"""
import os, signal
from medusa.cli import train
from medusa.training.trainer import Trainer
log = Trainer.log
def log_then_die(self, record):
    log(self, record)
    if record.get("step") == {KILL_STEP}:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer.log = log_then_die
train.main({argv!r})
"""
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300, check=False)


def records(folder):
    """metrics.jsonl without the wall-clock field."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_sigkill_between_saves_then_resume_equals_a_run_never_killed(tiny_pkl, tmp_path):
    argv = flags(tiny_pkl, tmp_path)
    cut, full = tmp_path / "cut", tmp_path / "full"
    proc = killed_run(argv + ["--output_dir", str(cut)])
    assert proc.returncode == -9, proc.stderr[-3000:]
    saved = json.loads(str(np.load(cut / "last_state.npz")["meta"]))["step"]
    assert saved < KILL_STEP and records(cut)[-1]["step"] == KILL_STEP     # a line the state does not cover
    resumed = train.main(argv + ["--output_dir", str(cut), "--resume"])
    whole = train.main(argv + ["--output_dir", str(full)])
    assert resumed.step == whole.step > KILL_STEP and resumed.opt.steps == whole.opt.steps
    steps = [(r["split"], r["step"]) for r in records(cut)]
    assert len(steps) == len(set(steps))                                    # no step logged twice
    assert records(cut) == records(full)
    for name in ("last.jtr", "best.jtr"):
        a, b = load_heads(cut / name), load_heads(full / name)
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=f"{name}: {n}")
    state_a, state_b = np.load(cut / "last_state.npz"), np.load(full / "last_state.npz")
    assert state_a.files == state_b.files
    for k in state_a.files:
        if k != "meta":                                                     # meta holds the output_dir
            np.testing.assert_array_equal(state_a[k], state_b[k], err_msg=k)
