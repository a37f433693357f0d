"""Writing files: atomically (a reader or a crash never sees half of one), and numpy values as JSON."""
import os
from pathlib import Path

import numpy as np


def atomic_write(path, data) -> Path:
    """Write `data` (bytes or str) to a temporary file beside `path`, then rename it over `path`
    (os.replace is atomic on one filesystem). Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def json_default(x):
    """`json.dumps(..., default=json_default)`: numpy scalars and arrays as plain numbers/lists."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
