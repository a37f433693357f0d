"""The one place where Jittor is configured and imported.

Jittor reads its compiler flags from the environment when it is first imported, so every
module of this package imports Jittor through here (`from medusa.runtime.backend import jt`).
Defaults only fill in what the user has not set: an explicit environment always wins.

- `use_mkl=0`: Jittor would otherwise download oneDNN on first use, which fails offline.
- `nvcc_path=""` when no GPU is visible: nvcc may be installed without a driver, and
  Jittor's CUDA set-up then fails at import.
- `log_silent=1`: Jittor's per-compile info lines would drown progress bars.
- `FIX_TORCH_ERROR=0`: else `import jittor` imports torch (when installed) for a workaround of
  torch's own; our runtime never needs torch, and importing it costs ~1.5 s and memory.
- `DISABLE_MULTIPROCESSING=1` on the CPU: kernels compile in-process, not in a forked pool (see
  _environment_defaults).
"""
import os
import signal
import threading
from contextlib import contextmanager

from medusa.runtime.devices import gpu_available


def _environment_defaults() -> dict:
    defaults = {"use_mkl": "0", "log_silent": "1", "FIX_TORCH_ERROR": "0"}
    if gpu_available():
        # offline-safe CUDA set-up (docs/gpu.md): no downloads of cutt/cutlass/nccl/cudnn
        defaults.update(use_cutt="0", use_cutlass="0", use_nccl="0", conv_opt="1")
    else:
        defaults["nvcc_path"] = ""
        # Jittor compiles kernels in a pool of up to 16 forked processes; when one of them dies
        # (the OOM killer, on a small machine) Pool.terminate() at exit waits forever for the
        # lock the dead worker held (seen: a finished distillation that never exited). On the
        # CPU compile in-process instead; a GPU host keeps the pool (its many cores pay).
        defaults["DISABLE_MULTIPROCESSING"] = "1"
    return defaults


for _key, _value in _environment_defaults().items():
    os.environ.setdefault(_key, _value)

import jittor as jt  # noqa: E402  (must follow the environment set-up above)


def _cache_float_limits():
    """Compiled CPU kernels (medusa/kernels/cpu.py's jt.code ops) switch the process to flush-to-zero
    when their library loads, and numpy's first np.finfo after that warns "The value of the
    smallest subnormal ... is zero" (four lines at the top of every benchmark). numpy caches
    finfo per type: computing it once here, before any kernel loads, keeps the true limits and
    the output clean. (Denormals still flush to zero afterwards; nothing here computes with
    values below 1e-38.)"""
    import numpy as np

    for t in (np.float16, np.float32, np.float64, np.longdouble):
        np.finfo(t)


_cache_float_limits()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _give_interrupts_back_to_python():
    """Jittor registers C-level SIGINT/SIGTERM handlers that quick_exit() the process
    (src/utils/log.cc), so Ctrl-C or `kill` would end a run without Python's KeyboardInterrupt,
    finally blocks or the chance to save. Both raise KeyboardInterrupt again (main thread only).
    Its SIGCHLD handler also quick_exits this process whenever any child process dies of a
    signal (meant for its dataset workers, which we do not use): back to the default."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


_give_interrupts_back_to_python()


class StopRequest:
    """Set by SIGINT/SIGTERM inside `interrupts_deferred()`."""
    requested = None    # the signal's name once one arrived


@contextmanager
def interrupts_deferred():
    """Inside, SIGINT/SIGTERM do not interrupt: they set the yielded StopRequest's `requested`,
    and the loop stops at a point where its state is whole (a trainer between optimizer
    steps). A second signal interrupts at once."""
    stop = StopRequest()

    def note(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        stop.requested = signal.Signals(signum).name

    main = threading.current_thread() is threading.main_thread()
    if main:
        old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        if main:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def use_device(device: str = "auto") -> str:
    """Select "cpu", "cuda" or "auto" (cuda when Jittor has CUDA). Returns the device used."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        device = "cuda" if jt.has_cuda else "cpu"
    if device == "cuda" and not jt.has_cuda:
        from medusa.runtime.errors import UsageError

        raise UsageError("--device cuda: Jittor found no CUDA on this machine; use --device cpu or auto "
                         "(docs/gpu.md, for a GPU machine)")
    jt.flags.use_cuda = 1 if device == "cuda" else 0
    return device


def default_compute_dtype() -> str:
    """fp16 on a GPU; fp32 on the CPU, where Jittor's fp16 matmul is ~160x slower."""
    return "float16" if jt.flags.use_cuda else "float32"


def collectives() -> dict:
    """What this process's gradient all-reduce runs on: Jittor's MPI mode (under mpirun) and, on
    a GPU, whether its NCCL ops were built and loaded (use_nccl=1 with NCCL found; else MPI
    copies through the host). Written into a training run's train_args.json."""
    from jittor import compile_extern

    return {"mpi": bool(jt.in_mpi), "nccl": getattr(compile_extern, "nccl_ops", None) is not None}
