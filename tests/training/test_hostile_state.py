"""Crafted files whose unpickling would run code are refused by the loaders themselves, with the
project's one-line error, and the code never runs: a training state (last_state.npz) read by
`--resume`, torch checkpoints (pytorch_model*.bin) read by conversion, and FasterDecoding heads
(medusa_lm_head.pt) read by the heads import. The payload would create a marker file."""
import os
import pickle
import shutil

import numpy as np
import pytest
from support import tiny_args

from medusa.heads.io import import_fasterdecoding_heads
from medusa.model import weights
from medusa.runtime.errors import UsageError
from medusa.training import state
from medusa.training.trainer import Trainer


class Payload:
    """Unpickling this runs os.system: what a crafted file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_states(marker):
    """last_state.npz variants: an object array (a pickle) beside a real meta; the meta itself a
    pickled object; the whole file a pickle."""
    meta = np.array('{"args": {}, "step": 1, "best": 1.0, "optimizer_steps": 1, "head_config": {}}')
    yield lambda p: np.savez(p, meta=meta, **{"heads/x": np.array([Payload(marker)], dtype=object)})
    yield lambda p: np.savez(p, meta=np.array([Payload(marker)], dtype=object))
    yield lambda p: p.write_bytes(pickle.dumps({"meta": Payload(marker)}))


@pytest.mark.parametrize("variant", range(3))
def test_resume_refuses_a_state_that_would_run_code(tiny_pkl, tmp_path, variant):
    marker = tmp_path / "pwned"
    args = tiny_args(tiny_pkl, tmp_path, resume=True)
    args.out_dir().mkdir(parents=True)
    list(hostile_states(marker))[variant](args.out_dir() / state.STATE_NAME)
    with pytest.raises(UsageError, match="--resume: cannot read .*last_state.npz"):
        Trainer(args).fit()                                     # the trainer's own loader, through --resume
    assert not marker.exists()


def torch_payloads(path, marker):
    """A torch.save zip whose state dict holds the payload, and a legacy (raw pickle) file."""
    import torch

    yield lambda: torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": Payload(marker)}, path)
    yield lambda: path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))


@pytest.mark.parametrize("variant", range(2))
def test_torch_checkpoints_that_would_run_code_are_refused(tiny_hf, tmp_path, variant):
    pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    model = tmp_path / "hf"
    model.mkdir()
    shutil.copy(tiny_hf("llama") / "config.json", model / "config.json")
    list(torch_payloads(model / "pytorch_model.bin", marker))[variant]()
    with pytest.raises(UsageError, match="cannot read torch checkpoint .*pytorch_model.bin"):
        weights.read_checkpoint(model)
    with pytest.raises(UsageError, match="cannot read torch checkpoint"):
        weights.convert(model, tmp_path / "out" / "model.pkl", "float32")
    heads = tmp_path / "heads"
    heads.mkdir()
    list(torch_payloads(heads / "medusa_lm_head.pt", marker))[variant]()
    with pytest.raises(UsageError, match="cannot read Medusa heads .*medusa_lm_head.pt"):
        import_fasterdecoding_heads(heads)
    assert not marker.exists() and not (tmp_path / "out").exists()
