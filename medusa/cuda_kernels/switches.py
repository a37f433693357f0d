"""On/off switches of the fused kernels: each starts from its $MEDUSA_* variable, and its use_*()
sets it (True/False) or only asks (None), e.g. to time Jittor's own ops in the same process."""
import os

# key: (environment variable, default)
_SWITCHES = {
    "enabled": ("MEDUSA_CUDA_KERNELS", True),    # every fused kernel
    "gemv": ("MEDUSA_GEMV", True),               # one-row kernels (off: one-row matmuls go to cuBLAS)
    "layer_op": ("MEDUSA_LAYER_OP", True),       # decode_layer (off: a decode step's layer is six ops)
    "rows_layer": ("MEDUSA_ROWS_LAYER", True),   # rows_layer (off: a small model's tree layer is ~10 ops)
    "mma": ("MEDUSA_MMA", True),                 # mma_rows (off: a tree's projections go to cuBLAS)
    # tree_attention: a tree's attention as flash_tree (64 rows x 64 keys a block on the tensor
    # cores, chunks merged after); off: one block per query row (cache_attention)
    "tree_attention": ("MEDUSA_TREE_ATTENTION", True),
}
def _from_env(var, default) -> bool:
    """On by default: anything but 0 keeps it on. Off by default: only 1 turns it on."""
    value = os.environ.get(var)
    return default if value is None else (value != "0" if default else value == "1")


_state = {key: _from_env(var, default) for key, (var, default) in _SWITCHES.items()}


def _switch(key):
    def use(enabled: bool = None) -> bool:
        if enabled is not None:
            _state[key] = bool(enabled)
        return _state[key]
    use.__doc__ = f"Turn this kernel switch on or off (None: only ask; ${_SWITCHES[key][0]}). Returns the setting."
    return use


use_kernels = _switch("enabled")
use_gemv = _switch("gemv")
use_layer_op = _switch("layer_op")
use_rows_layer = _switch("rows_layer")
use_mma = _switch("mma")
use_tree_attention = _switch("tree_attention")
