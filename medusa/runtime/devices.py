"""Whether this machine has an NVIDIA GPU, decided without importing Jittor or starting a process.

runtime.py needs the answer before `import jittor` (it picks Jittor's compiler flags from it) and
setup_gpu.py before Jittor is patched, so it lives here, importing nothing of the package.
"""
import os

# present exactly when the NVIDIA kernel driver is loaded (Linux; containers get them passed in)
DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


def gpu_available() -> bool:
    """True when an NVIDIA driver is loaded; an installed nvcc alone does not count. Read from
    the driver's files rather than by running nvidia-smi, which costs a process start on every
    import and can hang for its whole timeout on a machine with a broken driver."""
    return any(os.path.exists(path) for path in DRIVER_FILES)
