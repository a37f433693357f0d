"""The draft vocabulary: the token ids the heads may propose (--draft_vocab).

Made by `medusa vocab draft` from token samples; read when a command plans its heads.
"""
import json
from pathlib import Path

import numpy as np

from medusa.runtime.errors import UsageError

DRAFT_KEY = "token_ids"
DRAFT_FILE = "draft_vocab.json"   # beside heads: what --draft_vocab auto takes on a CPU


class DraftVocab:
    """The token ids the heads may propose. Their shared projection then reads only these
    columns of the base lm_head ([H, n] instead of [H, V]: on the CPU the heads' projection
    streams 113 MB a pass for SmolLM2, and rnn heads make one pass per tree depth). FR-Spec's
    frequency-ranked draft subset; EAGLE-3's d2t map. Lossless: the base model still verifies
    every drafted token, and a token outside the set is only never drafted. The base model's
    own vocabulary (reduced or not) is untouched."""

    def __init__(self, token_ids, source="draft vocabulary"):
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or not len(ids) or ids.dtype.kind not in "iu" or ids.min() < 0:
            raise UsageError(f"{source}: {DRAFT_KEY} must be a non-empty list of token ids >= 0")
        self.token_ids = np.unique(ids.astype(np.int64))        # ascending
        self.source = str(source)
        self.path = None                                         # the file it came from (load)
        self._model = self._weight = self._rows = None

    def __len__(self):
        return len(self.token_ids)

    @classmethod
    def load(cls, path):
        """A JSON file {"token_ids": [...], ...} (`python -m medusa vocab draft`)."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"--draft_vocab {path}: no such file")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"--draft_vocab {path}: not JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get(DRAFT_KEY), list):
            raise UsageError(f"--draft_vocab {path}: needs an object with a {DRAFT_KEY!r} list "
                             "(python -m medusa vocab draft writes one)")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in data[DRAFT_KEY]):
            raise UsageError(f"--draft_vocab {path}: {DRAFT_KEY} must hold integers only")
        draft = cls(data[DRAFT_KEY], source=f"--draft_vocab {path}")
        draft.path = path
        return draft

    def check(self, vocab_size):
        """Every id inside a vocabulary of `vocab_size` (before the model loads)."""
        if self.token_ids[-1] >= vocab_size:
            raise UsageError(f"{self.source}: token id {int(self.token_ids[-1])} is outside the model's "
                             f"vocabulary of {vocab_size}: was it made for another tokenizer?")

    def projection(self, model):
        """(the lm_head columns [H, n] of these tokens, their logit rows [n]) for `model`, made once."""
        from medusa.runtime.backend import jt

        if self._model is not model:
            self.check(model.config.vocab_size)
            rows = model.vocab.rows(self.token_ids)
            if (rows < 0).any():
                raise UsageError(f"{self.source}: token {int(self.token_ids[rows < 0][0])} is outside the "
                                 "model's reduced vocabulary")
            self._weight = jt.array(model.lm_head_t().numpy()[:, rows])
            self._model, self._rows = model, rows
        return self._weight, self._rows
