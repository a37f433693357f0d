"""On/off switches of the fused kernels ($MEDUSA_* at import; each use_*() sets or asks)."""
import os

_state = {"enabled": os.environ.get("MEDUSA_CUDA_KERNELS", "1") != "0",
          "gemv": os.environ.get("MEDUSA_GEMV", "1") != "0",
          "layer_op": os.environ.get("MEDUSA_LAYER_OP", "1") != "0",
          # rows_layer has not run on a GPU yet (the device went away before its first call): opt-in
          "rows_layer": os.environ.get("MEDUSA_ROWS_LAYER", "0") == "1",
          "mma": os.environ.get("MEDUSA_MMA", "1") != "0"}


def use_kernels(enabled: bool = None) -> bool:
    """Turn the fused kernels on or off (None: only ask; $MEDUSA_CUDA_KERNELS=0 starts off), e.g.
    to time Jittor's own ops in the same process. Returns the setting."""
    if enabled is not None:
        _state["enabled"] = bool(enabled)
    return _state["enabled"]


def use_gemv(enabled: bool = None) -> bool:
    """The same for gemv alone ($MEDUSA_GEMV=0: one-row matmuls go to cuBLAS)."""
    if enabled is not None:
        _state["gemv"] = bool(enabled)
    return _state["gemv"]


def use_layer_op(enabled: bool = None) -> bool:
    """The same for decode_layer ($MEDUSA_LAYER_OP=0: a decode step's layer runs as six ops)."""
    if enabled is not None:
        _state["layer_op"] = bool(enabled)
    return _state["layer_op"]


def use_rows_layer(enabled: bool = None) -> bool:
    """The same for rows_layer, off unless $MEDUSA_ROWS_LAYER=1: it is written and compiled but has
    not run on a GPU yet (tests/test_gpu.py::test_rows_layer_equals_its_kernels holds it to the
    op-by-op path bit for bit; turn the default on once that passes on a device)."""
    if enabled is not None:
        _state["rows_layer"] = bool(enabled)
    return _state["rows_layer"]


def use_mma(enabled: bool = None) -> bool:
    """The same for mma_rows ($MEDUSA_MMA=0: a tree's projections go to cuBLAS)."""
    if enabled is not None:
        _state["mma"] = bool(enabled)
    return _state["mma"]
