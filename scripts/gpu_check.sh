#!/usr/bin/env bash
# GPU bring-up check on a bare machine without network (see docs/gpu.md and medusa/setup_gpu.py).
# Usage: scripts/gpu_check.sh [WHEEL_DIR] [REPORT_DIR]
#   WHEEL_DIR  wheels from scripts/make_gpu_wheels.sh (default .whl)
#   REPORT_DIR where logs and summary.txt go (default $OUT, else results/gpu_check)
# Environment: JT_TESTS (Jittor tests to run, default below), TEST_TIMEOUT (s per test, 300),
#   JOBS (tests at once, 2: each Jittor process runs its own pool of nvcc workers; 10 at once on
#   16 cores got tests SIGKILLed, see results/gpu_check/README.md), PYTEST_TIMEOUT (pytest -m gpu,
#   TEST_TIMEOUT + 60), SELF_CHECK=0 (patch only). New kernels take 5-15 s each to compile with
#   nvcc 13, so Jittor's full tests take many minutes: pick a few for a short device call.
#   Seen on an H100 (CUDA 13.0): every test case that finished passed; with 200-300 s per test
#   most tests were cut off while still compiling (rc=124 in summary.txt is a timeout).
# Installs the wheels into $SITE (default /tmp/site; numpy 1.26.4 there shadows the system numpy 2.x),
# patches and self-checks Jittor, runs Jittor's own tests of the ops we use, then pytest -m gpu.
# Exits non-zero when anything failed; summary.txt says what.
set -uo pipefail
cd "$(dirname "$0")/.."
W=${1:-.whl}
R=${2:-${OUT:-results/gpu_check}}
SITE=${SITE:-/tmp/site}
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
mkdir -p "$R"
R=$(cd "$R" && pwd)
summary() { echo "$*" | tee -a "$R/summary.txt"; }
: > "$R/summary.txt"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$W"/*.whl \
    || { summary "FAIL install wheels from $W"; exit 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Jittor's own tests import jittor directly: give them the offline-safe flags medusa.runtime.backend sets.
export use_mkl=0 use_cutt=0 use_cutlass=0 use_nccl=0 conv_opt=1 log_silent=1 FIX_TORCH_ERROR=0
# Jittor finds libcudart beside nvcc: point it at the toolkit, not at a wrapper script on PATH.
# Only with a GPU present: CPU machines here have nvcc too, and patching their Jittor is not wanted.
nvidia-smi -L > /dev/null 2>&1 || { summary "FAIL no GPU (nvidia-smi -L failed): nothing to check"; exit 1; }
[ -z "${nvcc_path+x}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export nvcc_path=/usr/local/cuda/bin/nvcc
{ nvidia-smi -L; echo "nvcc: ${nvcc_path:-$(command -v nvcc)}"; nvcc --version; python3 --version
  python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)"
} > "$R/gpu.txt" 2>&1
cat "$R/gpu.txt"

start=$SECONDS
python3 -m medusa.runtime.cuda_setup $([ "${SELF_CHECK:-1}" = 0 ] && echo --patch-only) \
    --report "$R/setup_gpu.json" > "$R/setup_gpu.log" 2>&1
rc=$?
cat "$R/setup_gpu.log"
summary "setup_gpu rc=$rc ($((SECONDS - start)) s)"
failed=$rc
# Compile Jittor's core once here (cached afterwards) rather than in every test at once.
python3 -c "from medusa.runtime.backend import jt, use_device; print('jittor on', use_device('cuda'))" \
    >> "$R/setup_gpu.log" 2>&1
imported=$?
summary "import jittor on cuda rc=$imported"

# The project's GPU tests (pytest -m gpu) run beside Jittor's: compiling kernels is the long part.
# Only the files that hold GPU tests: the others import transformers, which needs the numpy 2 that
# the Jittor wheels' numpy 1.26 shadows here. No plugin autoload: the image's plugins are not ours.
GPU_TESTS=$(grep -l "pytest.mark.gpu" tests/*.py)
if [ -n "$GPU_TESTS" ] && [ $imported -eq 0 ]; then
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 15 "${PYTEST_TIMEOUT:-$((TEST_TIMEOUT + 60))}" \
        python3 -m pytest -v -m gpu -p no:cacheprovider $GPU_TESTS > "$R/pytest_gpu.log" 2>&1 &
    pytest_pid=$!
fi

# Jittor's tests of the ops we rely on, in parallel (Jittor locks its compile cache);
# one log each, gathered into jittor_tests.log.
TESTS=${JT_TESTS:-"test_matmul test_reduce_op test_arg_reduce_op test_argsort_op test_where_op
       test_fp16 test_index_op test_concat_op test_setitem test_attention"}
mkdir -p /tmp/jt_logs
JT_DIR=$(python3 -c "import importlib.util as u; print(u.find_spec('jittor').submodule_search_locations[0])")
run_test() {
    local t=$1 s=$SECONDS
    [ -f "$JT_DIR/test/$t.py" ] || { echo "$t absent" > /tmp/jt_logs/$t.rc; return; }
    # Some tests import cudnn_ops, which conv_opt=1 (no cudnn offline) leaves undefined: None is enough.
    timeout -k 15 "$TEST_TIMEOUT" python3 -c "
import runpy, sys, jittor.compile_extern as ce
for name in ('cudnn_ops', 'cublas_ops', 'cub_ops', 'cufft_ops'):
    setattr(ce, name, getattr(ce, name, None))
sys.argv = ['$t', '-v']
runpy.run_module('jittor.test.$t', run_name='__main__', alter_sys=True)" > /tmp/jt_logs/$t.log 2>&1
    echo "$t rc=$? ($((SECONDS - s)) s)" > /tmp/jt_logs/$t.rc
}
export -f run_test; export TEST_TIMEOUT JT_DIR
# Without a working import every test would only recompile the core and fail.
[ $imported -eq 0 ] || { summary "jittor tests skipped: jittor did not import"; TESTS=""; failed=1; }
echo $TESTS | tr ' ' '\n' | grep . | xargs -P "${JOBS:-2}" -I{} bash -c 'run_test {}'
: > "$R/jittor_tests.log"
for t in $TESTS; do
    summary "$(cat /tmp/jt_logs/$t.rc)"
    grep -q "rc=0" /tmp/jt_logs/$t.rc || grep -q absent /tmp/jt_logs/$t.rc || failed=1
    [ -f /tmp/jt_logs/$t.log ] && { echo "===== $t"; cat /tmp/jt_logs/$t.log; } >> "$R/jittor_tests.log"
done

if [ -n "${pytest_pid:-}" ]; then
    wait $pytest_pid
    rc=$?
    summary "pytest -m gpu ($(echo $GPU_TESTS)) rc=$rc: $(tail -1 "$R/pytest_gpu.log")"
    [ $rc -eq 0 ] || failed=1
else
    summary "pytest -m gpu: not run (no GPU tests, or jittor did not import)"
    [ -z "$GPU_TESTS" ] || failed=1
fi
summary "total $SECONDS s; $([ $failed -eq 0 ] && echo ALL PASSED || echo SOME FAILED)"
exit $failed
