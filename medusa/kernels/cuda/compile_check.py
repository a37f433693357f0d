"""Compile every fused kernel's `jt.code` source with nvcc, without a GPU.

A GPU call is scarce (docs/gpu.md); a kernel that does not compile costs one. This renders the
CUDA source of each op as Jittor would build it (the ops are called with small placeholder
vars while `jt.code` is replaced by a recorder, so nothing runs), declares what Jittor's
code_op.cc puts around a source (in{i}_p, in{i}_shape{j}, in{i}_type, the out{i}_* names and
`data`), and runs `nvcc -c` on each one. It checks that the sources compile for the target
architecture, not what they compute: tests/test_gpu.py does that on a device.

    python -m medusa compile-check [--arch sm_90] [--keep DIR]
"""
import contextlib
import importlib
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medusa.kernels.cuda import attention
from medusa.kernels.cuda.switches import use_tree_attention
from medusa.runtime.backend import jt

_C_TYPES = {"float16": "__half", "float32": "float", "int32": "int", "int64": "long long"}
_MODULES = ("attention", "compact", "elementwise", "gemv", "layers", "mma")


@contextlib.contextmanager
def recorded_ops():
    """Within: jt.code records (name, cuda_header, cuda_src, inputs, output shapes and dtypes)
    into the yielded list and returns zero vars of the output shapes."""
    ops, real = [], jt.code

    def record(shapes, dtypes, inputs, cuda_header="", cuda_src="", data=None, **_):
        many = isinstance(shapes, list)
        shapes, dtypes = (shapes, dtypes) if many else ([shapes], [dtypes])
        ops.append({"header": cuda_header, "src": cuda_src, "inputs": list(inputs),
                    "shapes": [[int(e) for e in s] for s in shapes], "dtypes": [str(d) for d in dtypes]})
        outs = [jt.zeros(tuple(s), d) for s, d in zip(shapes, dtypes)]
        return outs if many else outs[0]

    jt.code = record           # the kernel modules call jt.code through this same module object
    try:
        yield ops
    finally:
        jt.code = real


def _with_flash_tree(call):
    """call() with flash_tree taking any number of rows (its switch on, FLASH_MIN_ROWS 1)."""
    before, min_rows = use_tree_attention(), attention.FLASH_MIN_ROWS
    use_tree_attention(True)
    attention.FLASH_MIN_ROWS = 1
    try:
        return call()
    finally:
        use_tree_attention(before)
        attention.FLASH_MIN_ROWS = min_rows


def render_ops() -> dict:
    """name -> list of recorded ops: every fused op at small Llama-like sizes, fp16 (and fp32
    where the op takes it)."""
    ck = {m: importlib.import_module(f"medusa.kernels.cuda.{m}") for m in _MODULES}
    T, H, inter, nq, nkv, d, L, start = 9, 256, 512, 4, 2, 64, 64, 20
    z = lambda dtype, *shape: jt.zeros(shape, dtype)
    rendered = {}
    for dtype in ("float16", "float32"):
        h = lambda *s: z(dtype, *s)
        f, i32 = (lambda *s: z("float32", *s)), (lambda *s: z("int32", *s))
        keys, values, cos, sin = h(1, nkv, L, d), h(1, nkv, L, d), f(L, d), f(L, d)
        qkv_w, o_w, gu_w, down_w = h(H, (nq + 2 * nkv) * d), h(nq * d, H), h(H, 2 * inter), h(inter, H)
        calls = {
            "rms_norm": lambda: ck["elementwise"].rms_norm(h(1, T, H), h(H), 1e-6),
            "add_rms_norm": lambda: ck["elementwise"].add_rms_norm(h(1, T, H), h(1, T, H), h(H), 1e-6),
            "silu_mul": lambda: ck["elementwise"].silu_mul(h(1, T, 2 * inter)),
            "qkv_rope": lambda: ck["elementwise"].qkv_rope(h(1, T, (nq + 2 * nkv) * d), cos, sin, i32(1, T), nq, nkv, d),
            "qkv_rope_into_cache": lambda: ck["elementwise"].qkv_rope_into_cache(
                h(1, T, (nq + 2 * nkv) * d), cos, sin, i32(1, T), keys, values, start, nq, nkv, d),
            "cache_attention": lambda: ck["attention"].cache_attention(
                h(1, nkv, (nq // nkv) * T, d), keys, values, start + T, f(1, 1, T, start + T), d ** -0.5, True),
            "norm_gemv": lambda: ck["gemv"].norm_gemv(h(1, 1, H), h(1, 1, H), h(H), 1e-6, qkv_w),
            "silu_gemv": lambda: ck["gemv"].silu_gemv(h(1, 1, 2 * inter), down_w),
            "compact_cache": lambda: ck["compact"].compact_cache([keys, values], start, [start + 2, start + 5]),
            "decode_layer": lambda: ck["layers"].decode_layer(
                h(1, 1, H), h(1, 1, H), h(H), qkv_w, None, cos, sin, i32(1, 1), keys, values, start, o_w, h(H),
                gu_w, down_w, 1e-6, d ** -0.5),
            "decode_layer_rows": lambda: ck["layers"].decode_layer(      # the exact option's decode mode
                h(1, T, H), h(1, T, H), h(H), qkv_w, None, cos, sin, i32(1, T), keys, values, start, o_w, h(H),
                gu_w, down_w, 1e-6, d ** -0.5, mask=f(1, 1, T, start + T)),
            "gemv_rows": lambda: ck["gemv"].gemv(h(1, T, H), qkv_w),
        }
        if dtype == "float16":        # the tensor-core kernels take fp16 only
            calls["cache_attention_flash"] = lambda: _with_flash_tree(lambda: ck["attention"].cache_attention(
                h(1, nkv, (nq // nkv) * T, d), keys, values, start + T, f(1, 1, T, start + T), d ** -0.5, True))
            calls["mma_rows"] = lambda: ck["mma"].mma_rows(h(1, T, H), qkv_w, bias=h((nq + 2 * nkv) * d))
            calls["rows_layer"] = lambda: ck["layers"].rows_layer(
                h(1, T, H), h(1, T, H), h(H), qkv_w, None, cos, sin, i32(1, T), keys, values, start,
                f(1, 1, T, start + T), o_w, h(H), gu_w, down_w, 1e-6, d ** -0.5)
            calls["rows_layer_one"] = lambda: ck["layers"].rows_layer(   # the exact option's tree mode
                h(1, 1, H), h(1, 1, H), h(H), qkv_w, None, cos, sin, i32(1, 1), keys, values, start, None, o_w,
                h(H), gu_w, down_w, 1e-6, d ** -0.5)
        for name, call in calls.items():
            with recorded_ops() as ops:
                call()
            rendered[f"{name}_{dtype}"] = ops
    return rendered


def program(op: dict) -> str:
    """One op's source inside a host function that declares what code_op.cc would."""
    lines = []
    for prefix, items in (("in", [(str(v.dtype), [int(e) for e in v.shape]) for v in op["inputs"]]),
                          ("out", list(zip(op["dtypes"], op["shapes"])))):
        for k, (dtype, shape) in enumerate(items):
            t = _C_TYPES[dtype]
            lines.append(f"typedef {t} {prefix}{k}_type; {t}* {prefix}{k}_p = nullptr;")
            lines += [f"const int {prefix}{k}_shape{j} = {e}; (void){prefix}{k}_shape{j};" for j, e in enumerate(shape)]
    return (op["header"] + "\n#include <map>\n#include <string>\nvoid medusa_compile_check() {\n"
            "std::map<std::string, double> data;\n" + "\n".join(lines) + "\n" + op["src"] + "\n}\n")


def compile_all(arch="sm_90", nvcc="nvcc", keep=None, jobs=2) -> dict:
    """name -> (ok, nvcc's messages) for every rendered op."""
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="medusa_kernels_"))
    folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    for name, ops in render_ops().items():
        for k, op in enumerate(ops):
            path = folder / f"{name}_{k}.cu"
            path.write_text(program(op))
            sources[path.stem] = path

    def build(item):
        name, path = item
        r = subprocess.run([nvcc, f"-arch={arch}", "-std=c++17", "-c", str(path), "-o", str(path.with_suffix(".o"))],
                           capture_output=True, text=True)
        errors = [line for line in (r.stdout + r.stderr).splitlines() if "error" in line or "fatal" in line]
        return name, (r.returncode == 0, "\n".join(errors[:20]))

    try:
        with ThreadPoolExecutor(jobs) as pool:
            return dict(pool.map(build, sources.items()))
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
