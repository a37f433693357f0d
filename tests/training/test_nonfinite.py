"""A NaN or inf in training (trainer.py) stops the run at once: a one-line error with the step, the
epoch and what to look at, exit 2, nothing saved as best, the last good state kept."""
import numpy as np
import pytest
from support import tiny_args

from medusa import cli
from medusa.cli import train as train_cmd
from medusa.runtime.errors import NonFiniteError
from medusa.training import hidden_cache
from medusa.training import state as run_state
from medusa.training import trainer as training


def poisoned(states, which):
    """The cached states with those of the samples `which` turned to NaN (what a bad cache holds)."""
    out = [np.array(h) for h in states]
    for i in which:
        out[i][:] = np.nan
    return out


def test_a_nan_cache_stops_training_through_the_command(tiny_pkl, tmp_path, monkeypatch, capsys):
    """The case of the issue: a hidden-state cache holding NaN (one that passes the cache's own
    checks) made training exit 0, log top-1 = 1.0 and print a best.jtr path that did not exist."""
    real = hidden_cache.load_or_build
    monkeypatch.setattr(hidden_cache, "load_or_build", lambda *a: poisoned(real(*a), range(len(a[1]))))
    args = tiny_args(tiny_pkl, tmp_path)
    argv = ["--jittor_base_weights", args.jittor_base_weights, "--data_path", args.data_path, "--device", "cpu",
            "--output_dir", str(args.out_dir()), "--cache_dir", args.cache_dir, "--medusa_num_heads", "3",
            "--epochs", "2", "--batch_size", "4", "--max_length", "64"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.run(lambda a: train_cmd.main(a, family="medusa"), argv)
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and len(err) == 1, captured.err[-2000:]
    assert "training loss is nan at step 1 of" in err[0] and "(epoch 1 of 2)" in err[0]
    assert "hidden states of sample" in err[0] and "hidden-state cache" in err[0], err[0]
    assert "best.jtr" not in captured.out + captured.err
    out = args.out_dir()
    assert not (out / "best.jtr").exists() and not (out / "last.jtr").exists() and not (out / "metrics.jsonl").exists()


def test_a_nan_in_a_later_epoch_keeps_the_last_good_state(tiny_pkl, tmp_path, monkeypatch):
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, epochs=3))
    real_step = tr.train_step

    def step(totals):                  # the cache turns bad after the first epoch
        if tr.step == tr.steps_per_epoch:
            tr.hidden = poisoned(tr.hidden, tr.train_set)
        real_step(totals)

    monkeypatch.setattr(tr, "train_step", step)
    out = tr.args.out_dir()
    with pytest.raises(NonFiniteError) as stopped:
        tr.fit()
    message = str(stopped.value)
    assert f"at step {tr.steps_per_epoch + 1} of {tr.stop_at} (epoch 2 of 3)" in message and "\n" not in message
    assert f"the last good state {out / run_state.STATE_NAME} is kept" in message
    saved = np.load(out / run_state.STATE_NAME)
    assert "meta" in saved.files and all(np.isfinite(saved[k]).all() for k in saved.files if k != "meta")
    assert tr.step == tr.steps_per_epoch           # stopped before the optimizer step
    assert (out / "best.jtr").is_file()            # the first epoch's, from before the NaN
    resumed = training.Trainer(tiny_args(tiny_pkl, tmp_path, epochs=3, resume=True))
    resumed.fit()                                   # the good state resumes (the cache on disk is fine)
    assert resumed.step == resumed.stop_at


def test_diverged_heads_are_told_apart_from_bad_inputs(tiny_pkl, tmp_path):
    from medusa.runtime.backend import jt

    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path, cache_hidden=False))
    for p in tr.heads.parameters():
        p.assign(jt.array(np.full(p.shape, np.inf, np.float32)))
    with pytest.raises(NonFiniteError, match=r"at step 1 of .*the heads diverged on finite inputs: lower --lr "
                                             r"\(now 0.01\).*no state was saved before"):
        tr.fit()
    assert not list(tr.args.out_dir().glob("*.jtr"))


def test_a_nan_validation_loss_saves_no_best(tiny_pkl, tmp_path, monkeypatch):
    tr = training.Trainer(tiny_args(tiny_pkl, tmp_path))
    real = tr.evaluate
    monkeypatch.setattr(tr, "evaluate", lambda: dict(real(), loss=float("nan")))
    with pytest.raises(NonFiniteError, match=r"validation loss is nan at step \d+ of \d+ \(epoch 1 of 2\)"):
        tr.fit()
    assert not (tr.args.out_dir() / "best.jtr").exists()
    assert not (tr.args.out_dir() / run_state.STATE_NAME).exists()
