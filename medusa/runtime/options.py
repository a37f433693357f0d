"""Runtime options: the MEDUSA_* environment switches, read once into one frozen object.

    import medusa.runtime.options as options
    options.current().gemv                    # False after MEDUSA_GEMV=off
    options.replace(gemv=False)               # switch at run time (kernels.cuda.use_gemv(False) does this)
    with options.override(device_loop="on"):  # tests: the previous options come back on exit
        ...
    options.as_dict()                         # what results files and train_args.json record

On/off switches share one grammar: `on`, `off` or `auto`, or the older `1`, `0`, `true`,
`false` (any case; empty = unset = auto). `auto` is the default behaviour: the fused kernels run
where they apply, the device loop runs on a GPU. A value outside a switch's grammar is a
UsageError naming the variable and the values it takes. docs/options.md holds the table
(`markdown_table()` makes it; a test keeps the two equal). No Jittor here.
"""
import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from medusa.runtime.errors import UsageError

_ON, _OFF = ("on", "1", "true"), ("off", "0", "false")


@dataclass(frozen=True)
class _Grammar:
    """How one switch is written in the environment and which values its field may hold."""
    values: str                         # the spellings, as the docs and the errors name them
    parse: Callable[[str, object], object]   # (lower-case text, field default) -> value; None: not allowed
    valid: Callable[[object], bool]     # a value set from code (override, replace) is one of these


def _on_off(text, default):
    return default if text == "auto" else True if text in _ON else False if text in _OFF else None


def _mode(text, default):
    return "on" if text in _ON else "off" if text in _OFF else "auto" if text == "auto" else None


def _count(text, default):
    return int(text) if text.isdigit() and int(text) >= 1 else None


ON_OFF = _Grammar("on, off or auto (also 1, 0, true, false)", _on_off, lambda v: isinstance(v, bool))
MODE = _Grammar("auto, on or off (also 1, 0, true, false)", _mode, lambda v: v in ("auto", "on", "off"))
MATMUL = _Grammar("blas or jittor", lambda t, d: t if t in ("blas", "jittor") else None,
                  lambda v: v in ("blas", "jittor"))
COUNT = _Grammar("a whole number >= 1 (unset: every core this process may run on)", _count,
                 lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1))
EXACT = _Grammar("decode, tree or off", lambda t, d: t if t in ("decode", "tree", "off") else None,
                 lambda v: v in ("decode", "tree", "off"))
PATH = _Grammar("a folder (unset: ~/.cache/medusa-jittor)", lambda t, d: t,
                lambda v: v is None or isinstance(v, str))


def _switch(var, grammar, default, where, doc):
    return field(default=default, metadata={"env": var, "grammar": grammar, "where": where, "doc": doc})


def _kernel(var, doc):
    """A fused-kernel switch: on/off, on by default, matters on a GPU."""
    return _switch(var, ON_OFF, True, "GPU", doc)


@dataclass(frozen=True)
class Options:
    """One field per MEDUSA_* variable (metadata: env, grammar, where it matters, doc)."""
    matmul: str = _switch("MEDUSA_MATMUL", MATMUL, "blas", "CPU",
                          "fp32 matmuls and attention through the BLAS kernels (jittor: Jittor's own loops)")
    blas_threads: Optional[int] = _switch("MEDUSA_BLAS_THREADS", COUNT, None, "CPU",
                                          "threads of the BLAS kernels (unset: every available core)")
    # the fused CUDA kernels (medusa/kernels/cuda/): each on unless turned off
    cuda_kernels: bool = _kernel("MEDUSA_CUDA_KERNELS", "every fused CUDA kernel (off: Jittor's own ops and cuBLAS)")
    gemv: bool = _kernel("MEDUSA_GEMV", "one-row matmuls as gemv kernels (off: cuBLAS; also turns off the layer op)")
    layer_op: bool = _kernel("MEDUSA_LAYER_OP", "a decoder layer as one op: decode_layer, and rows_layer below "
                                                "(off: six ops a layer)")
    rows_layer: bool = _kernel("MEDUSA_ROWS_LAYER", "a small model's tree (or short prompt) layer as one op, "
                                                    "rows_layer (off: ~10 ops)")
    mma: bool = _kernel("MEDUSA_MMA", "a tree's projections on the tensor cores, mma_rows (off: cuBLAS)")
    tree_attention: bool = _kernel("MEDUSA_TREE_ATTENTION", "a tree's fp16 attention as flash_tree (off: one block "
                                                            "per query row)")
    exact: str = _switch("MEDUSA_EXACT", EXACT, "decode", "GPU",
                         "a small model's tree rows and one-token steps computed alike, so greedy Medusa equals "
                         "plain greedy bit for bit: decode (a tree's rows through the decode step's gemv kernels), "
                         "tree (a decode step through the tree's mma kernels) or off (each its fastest kernels)")
    device_loop: str = _switch("MEDUSA_DEVICE_LOOP", MODE, "auto", "CPU and GPU",
                               "greedy Medusa steps kept on the device, one fetch a step (auto: on a GPU)")
    jittor_home: Optional[str] = _switch("MEDUSA_JITTOR_HOME", PATH, None, "CPU and GPU",
                                         "the project's cache: converted models (default, GGUF), NCCL links")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata["grammar"].valid(value):
                raise UsageError(f"option {f.name} (${f.metadata['env']}) must be "
                                 f"{f.metadata['grammar'].values}, got {value!r}")

    def as_dict(self) -> dict:
        """{field: value}, JSON-ready (what a results file or train_args.json records)."""
        return dataclasses.asdict(self)


def from_environ(environ=None) -> Options:
    """The options a mapping of environment variables (default os.environ) asks for."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(Options):
        text = environ.get(f.metadata["env"], "").strip()
        if not text:
            continue                                    # unset or empty: the default
        grammar = f.metadata["grammar"]
        value = text if grammar is PATH else grammar.parse(text.lower(), f.default)
        if value is None:
            raise UsageError(f"${f.metadata['env']} must be {grammar.values}, got {text!r}")
        values[f.name] = value
    return Options(**values)


_current: Optional[Options] = None


def current() -> Options:
    """The options of this process: read from the environment on first use, then as set."""
    global _current
    if _current is None:
        _current = from_environ()
    return _current


def replace(**fields) -> Options:
    """Change some options for the rest of the process (e.g. use_blas(False)). Returns them."""
    global _current
    _current = dataclasses.replace(current(), **fields)
    return _current


@contextlib.contextmanager
def override(**fields):
    """Options changed inside a `with` block only (tests); yields them."""
    global _current
    before = current()
    _current = dataclasses.replace(before, **fields)
    try:
        yield _current
    finally:
        _current = before


def as_dict() -> dict:
    """current().as_dict(): the options to record beside results."""
    return current().as_dict()


def markdown_table() -> str:
    """The table of docs/options.md, one row per switch."""
    rows = ["| variable | field | values | default | what it changes | matters on |",
            "|---|---|---|---|---|---|"]
    for f in dataclasses.fields(Options):
        m, default = f.metadata, f.default
        shown = "unset" if default is None else ("on" if default else "off") if isinstance(default, bool) else default
        rows.append(f"| `{m['env']}` | `{f.name}` | {m['grammar'].values} | {shown} | {m['doc']} | {m['where']} |")
    return "\n".join(rows) + "\n"
