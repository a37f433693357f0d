"""On/off switches of the fused kernels, kept in the runtime options (medusa/runtime/options.py,
one $MEDUSA_* variable each). use_*() sets its switch (True/False) or only asks (None), e.g. to
time Jittor's own ops in the same process."""
import dataclasses

import medusa.runtime.options as options


def _switch(name):
    def use(enabled: bool = None) -> bool:
        if enabled is not None:
            options.replace(**{name: bool(enabled)})
        return getattr(options.current(), name)
    var = next(f.metadata["env"] for f in dataclasses.fields(options.Options) if f.name == name)
    use.__doc__ = f"Turn this kernel switch on or off (None: only ask; ${var}). Returns the setting."
    return use


use_kernels = _switch("cuda_kernels")          # every fused kernel
use_gemv = _switch("gemv")                     # one-row kernels (off: one-row matmuls go to cuBLAS)
use_layer_op = _switch("layer_op")             # decode_layer (off: a decode step's layer is six ops)
use_rows_layer = _switch("rows_layer")         # rows_layer (off: a small model's tree layer is ~10 ops)
use_mma = _switch("mma")                       # mma_rows (off: a tree's projections go to cuBLAS)
# a tree's attention as flash_tree (64 rows x 64 keys a block on the tensor cores, chunks merged
# after); off: one block per query row (cache_attention)
use_tree_attention = _switch("tree_attention")


def exact_mode(mode: str = None) -> str:
    """How a small model's tree rows and its one-token steps are computed alike ($MEDUSA_EXACT):
    "decode" (a tree's rows through decode_layer's gemv kernels), "tree" (a one-token step through
    rows_layer's mma kernels) or "off". A mode sets it; None only asks. Returns the setting."""
    if mode is not None:
        options.replace(exact=mode)
    return options.current().exact
