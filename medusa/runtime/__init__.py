"""The bottom layer: Jittor's set-up (backend), devices, user errors, files, runtime options.

`from medusa.runtime import jt` imports Jittor configured (backend.py); the other modules of
this layer import no Jittor, so the torch side of the GPU benchmark can use them.
"""
import importlib
from pathlib import Path


def __getattr__(name):
    # Jittor is imported only when something asks for it (PEP 562), not by `medusa.runtime.errors`
    if name.startswith("__") or (Path(__file__).parent / f"{name}.py").is_file():
        raise AttributeError(name)   # a submodule (`from medusa.runtime import errors`): Python imports it
    backend = importlib.import_module("medusa.runtime.backend")
    try:
        return getattr(backend, name)
    except AttributeError:
        raise AttributeError(f"module 'medusa.runtime' has no attribute {name!r}") from None
