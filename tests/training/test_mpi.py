"""Data parallel training under Jittor's MPI mode: 2 ranks with batch_size 2 must follow the same
trajectory as 1 process with batch_size 4 (the same global batch), and only rank 0 writes.

Jittor compiles its MPI ops the first time a process runs under mpirun (~1 min on a 2-core
machine, cached in ~/.cache/jittor afterwards), hence the generous timeout."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import ROOT as REPO
from support import chat_file

from medusa.heads.io import load_heads

needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None,
                                reason="mpirun not found (apt-get install -y openmpi-bin libopenmpi-dev)")


def train(tiny_pkl, tmp_path, out, batch_size, mpi_ranks=0):
    cmd = [sys.executable, "train_ddp.py", "--jittor_base_weights", str(tiny_pkl("qwen2")),
           "--data_path", str(tmp_path / "chat.jsonl"), "--output_dir", str(tmp_path / out),
           "--cache_dir", str(tmp_path / "cache"), "--batch_size", str(batch_size), "--epochs", "1",
           "--max_steps", "3", "--val_ratio", "0", "--lr", "1e-2", "--warmup_ratio", "0",
           "--medusa_num_heads", "3", "--max_length", "64", "--device", "cpu"]
    if mpi_ranks:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(mpi_ranks)] + cmd
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
    return records, load_heads(tmp_path / out / "last.jtr")


@needs_mpirun
@pytest.mark.e2e
def test_two_ranks_match_one_process_on_the_same_global_batch(tiny_pkl, tmp_path):
    chat_file(tmp_path / "chat.jsonl", n=16)
    single, heads1 = train(tiny_pkl, tmp_path, "single", batch_size=4)
    multi, heads2 = train(tiny_pkl, tmp_path, "mpi", batch_size=2, mpi_ranks=2)
    assert len(multi) == len(single)          # rank 1 wrote nothing to the shared file
    args = {name: json.loads((tmp_path / name / "train_args.json").read_text()) for name in ("single", "mpi")}
    assert args["mpi"]["global_batch"] == 4 and args["mpi"]["world_size"] == 2
    assert (args["mpi"]["mpi"], args["single"]["mpi"], args["mpi"]["nccl"]) == (True, False, False)   # CPU: no NCCL
    for a, b in zip(single, multi):
        assert a["tokens"] == b["tokens"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    for p, q in zip(heads1.parameters(), heads2.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-3, atol=1e-5)


def test_mpi_compare_reports_loss_and_weight_differences(tmp_path):
    """scripts/mpi_compare.py (the GPU check's verdict) on hand-made run folders."""
    import pickle

    def run(name, loss, weight, tokens=100):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 4, "seconds": 2.0, "loss": loss,
                                                     "tokens": tokens}) + "\n")
        (d / "last.jtr").write_bytes(pickle.dumps({"w": np.array([1.0, weight], np.float32)}))
        return str(d)

    ref, same, off = run("ref", 2.0, 0.5), run("same", 2.0, 0.5), run("off", 2.2, 0.75)
    out = tmp_path / "report.json"
    cmd = [sys.executable, "scripts/mpi_compare.py", ref, same, off, "--output", str(out)]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
    runs = json.loads(out.read_text())["runs"]
    assert runs[0]["weights_max_abs_diff"] == 0 and runs[0]["loss_max_rel_diff"] == 0 and runs[0]["steps_per_s"] == 2
    assert runs[1]["weights_max_abs_diff"] == 0.25 and abs(runs[1]["loss_max_rel_diff"] - 0.1) < 1e-12
    bad = run("bad", 2.0, 0.5, tokens=99)
    assert subprocess.run(cmd[:3] + [bad, "--output", str(out)], cwd=REPO, capture_output=True).returncode == 1
    # throughput past the first record (its steps compile kernels): 30 steps in 3 s, 32 samples a step
    timed = Path(run("timed", 2.0, 0.5))
    (timed / "metrics.jsonl").write_text("".join(json.dumps({"split": "train", "step": step, "seconds": sec, "loss": 2.0,
                                                             "tokens": 100}) + "\n" for step, sec in ((10, 9.0), (40, 12.0))))
    (timed / "train_args.json").write_text(json.dumps({"global_batch": 32}))
    subprocess.run(cmd[:3] + [str(timed), "--output", str(out)], cwd=REPO, capture_output=True)
    entry = json.loads(out.read_text())["runs"][0]
    assert entry["steady_steps_per_s"] == 10 and entry["samples_per_s"] == 320 and abs(entry["steps_per_s"] - 40 / 12) < 1e-12
