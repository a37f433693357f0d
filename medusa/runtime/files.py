"""Files: written atomically (a reader or a crash never sees half of one), tensor files read
without running code, numpy values as JSON.

Trust model: a pickle can name any Python callable and have it run when loaded, so our `.pkl`
and `.jtr` files (pickled {name: numpy array} dicts, the format Jittor's jt.save writes) are read
with `SafeUnpickler`, which rebuilds only dicts, lists, strings, numbers and numpy arrays and
refuses every other global by name. safetensors files (`--format safetensors`) hold no code at all.
"""
import contextlib
import io
import os
import pickle
from pathlib import Path

import numpy as np

import medusa.runtime.options as options
from medusa.runtime.errors import UsageError

PACKAGE_DIR = Path(__file__).resolve().parents[1]   # medusa/: the shipped heads, trees and prompts


def medusa_home() -> Path:
    """The project's own cache: $MEDUSA_JITTOR_HOME (the option jittor_home) or ~/.cache/medusa-jittor."""
    return Path(options.current().jittor_home or Path.home() / ".cache" / "medusa-jittor")

# the globals a pickled dict of numpy arrays needs (numpy 1.x and 2.x module names)
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class UnsafePickleError(UsageError):
    """A pickle that would run code (or build anything but data) when loaded."""


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source}: refused to load: the pickle asks for {module}.{name}, which is "
                                "not numpy data (a file that can run code); only dicts of numpy arrays are read")


def load_pickled_tensors(path, what="tensors") -> dict:
    """{name: numpy array} from a pickle written by pickle/jt.save, read without running code."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e}") from e
    try:
        tensors = SafeUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # a truncated or foreign file raises many types
        raise UsageError(f"cannot read {what} {path}: {type(e).__name__}: {e}") from e
    if not isinstance(tensors, dict) or not all(isinstance(v, np.ndarray) for v in tensors.values()):
        raise UsageError(f"{path}: expected a pickled dict of numpy arrays ({what}), found {type(tensors).__name__}")
    return tensors


def load_tensors(path, what="tensors") -> dict:
    """{name: numpy array} of a .safetensors file or a pickled dict (.pkl, .jtr); never runs code."""
    if Path(path).suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UsageError(f"cannot read {what} {path}: {e}") from e
    return load_pickled_tensors(path, what)


def tensor_bytes(tensors: dict, suffix: str, metadata: dict = None) -> bytes:
    """The bytes of a tensor file: safetensors for ".safetensors" (metadata: str -> str), else a
    protocol-4 pickle of the dict (what jt.save writes)."""
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if suffix == ".safetensors":
        from safetensors.numpy import save

        return save(tensors, metadata=metadata)
    return pickle.dumps(tensors, protocol=4)


@contextlib.contextmanager
def naming(path):
    """Inside, an OSError that names no file (a failed write(): disk full) names `path`."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write(path, data) -> Path:
    """Write `data` (bytes or str) to a temporary file beside `path`, then rename it over `path`
    (os.replace is atomic on one filesystem). Creates the parent folder. The temporary name is
    this process's own (`<name>.<pid>.tmp`: two writers never share one) and is deleted when the
    write fails; the OSError of a failure (disk full, read-only) names `path`."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(e.errno, e.strerror, str(path)) from e      # the path, not the temporary name
    return path


def json_default(x):
    """`json.dumps(..., default=json_default)`: numpy scalars and arrays as plain numbers/lists."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
