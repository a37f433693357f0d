"""The resumable state of a training run (--resume): heads, optimizer moments, step and settings
in one npz of numpy arrays and a JSON string (nothing that runs code when read), written
atomically, and the checks that a resumed run is the same run.

A state is refused when a setting that shapes the run differs from the saved one (every flag but
args.RESUME_FREE) or the heads it holds do not fit the base model.
"""
import dataclasses
import io
import json
import zipfile

import numpy as np

from medusa.data import samples as data
from medusa.runtime.backend import jt
from medusa.runtime.errors import UsageError
from medusa.runtime.files import atomic_write
from medusa.training.args import RESUME_FREE, saved_args

STATE_NAME = "last_state.npz"        # in the run's output_dir
META_KEYS = {"args", "step", "best", "optimizer_steps", "head_config"}   # what write_state's meta holds


def write_state(path, heads, opt, progress: dict, args):
    """Save heads, the optimizer's moments, `progress` (step, best, since_best) and `args` to path."""
    moments = opt.state()
    meta = dict(progress, optimizer_steps=moments["steps"], args=dataclasses.asdict(args),
                head_config=heads.config.to_dict())
    arrays = {f"heads/{name}": p.numpy() for name, p in heads.named_parameters()}
    arrays.update({f"m/{i}": m for i, m in enumerate(moments["m"])})
    arrays.update({f"v/{i}": v for i, v in enumerate(moments["v"])})
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    atomic_write(path, buf.getvalue())


def read_state(path, args, heads, opt):
    """Load the state at path into heads and opt; -> (step, best, since_best). A UsageError when
    there is none, it cannot be read, or it was saved with other settings or other heads."""
    if not path.is_file():
        raise UsageError(f"--resume: nothing to resume in {path.parent} (no {STATE_NAME}; a run saves one every "
                         "--save_every steps, at each epoch end and at Ctrl-C)")
    try:
        with np.load(path, allow_pickle=False) as f:   # object arrays (pickles) are refused
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
        missing = META_KEYS - set(meta if isinstance(meta, dict) else ())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:   # truncated, foreign
        raise UsageError(f"--resume: cannot read {path} ({type(e).__name__}: {e}): it is damaged; "
                         "start a new --output_dir, or delete it to start this one again") from e
    if missing:
        raise UsageError(f"--resume: {path} is not a training state (no {', '.join(sorted(missing))}): start a new "
                         "--output_dir, or delete it to start this one again")
    saved, now = saved_args(meta["args"]), dataclasses.asdict(args)
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE and saved.get(k) != now.get(k))
    if changed:
        raise UsageError(f"--resume: {path} was saved with other settings: " + ", ".join(
            f"--{k} {saved.get(k)!r} (now {now.get(k)!r})" for k in changed) + "; resume with the saved ones "
            "or start a new --output_dir")
    if meta["head_config"] != heads.config.to_dict():
        raise UsageError(f"--resume: {path} holds heads {meta['head_config']}, this base model needs "
                         f"{heads.config.to_dict()}")
    for name, p in heads.named_parameters():
        p.assign(jt.array(arrays[f"heads/{name}"]))
    n = len([k for k in arrays if k.startswith("m/")])
    opt.load({"steps": meta["optimizer_steps"], "m": [arrays[f"m/{i}"] for i in range(n)],
              "v": [arrays[f"v/{i}"] for i in range(n)]})
    return meta["step"], meta["best"], meta.get("since_best", 0)


def drop_metrics_after(path, step):
    """Metrics logged after the saved step are computed again: drop them from the metrics.jsonl
    at path, so no step repeats."""
    if path.is_file():
        kept = [r for _, r in data.read_located(path, partial_tail="skip") if r.get("step", 0) <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
