#!/usr/bin/env bash
# The GPU benchmark (medusa/gpu_bench/) as one device call on a bare machine without network.
# Usage: scripts/gpu_bench.sh [OUT_DIR] [extra medusa.bench.gpu arguments...]
#   OUT_DIR  gets gpu_torch.json, gpu_jittor.json, their configs, bench.log (default $OUT, else bench_out)
# Environment: WHEELS (default .whl, from scripts/make_gpu_wheels.sh; empty: use the installed Jittor),
#   BUDGET (seconds for the whole script, default 560), TORCH_S (limit of the torch side, 200),
#   GPU_CHECK=1 (then, with the time left, Jittor's own tests via scripts/gpu_check.sh, packed into
#   OUT_DIR/gpu_check.tgz). The torch side runs first (it needs no compiling); each side rewrites
#   its JSON after every measurement, so a side cut off by its limit still leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${1:-${OUT:-bench_out}}
shift $(( $# > 0 ? 1 : 0 ))
W=${WHEELS-.whl}
BUDGET=${BUDGET:-560}
mkdir -p "$O"
LOG=$O/bench.log
: > "$LOG"
left() { echo $(( BUDGET - SECONDS )); }
if [ -n "$W" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$W"/*.whl \
        >> "$LOG" 2>&1 || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
if nvidia-smi -L >> "$LOG" 2>&1; then
    # Jittor finds libcudart beside nvcc: point it at the toolkit, not at a wrapper script on PATH.
    [ -z "${nvcc_path+x}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export nvcc_path=/usr/local/cuda/bin/nvcc
    # patches the installed Jittor in place for CUDA 13: only where a GPU will use it
    python3 -m medusa.runtime.cuda_setup --patch-only >> "$LOG" 2>&1 || { echo "setup_gpu failed" | tee -a "$LOG"; exit 1; }
fi
REF=$(mktemp -d)  # SmolLM2-shaped weights (270 MB): not in OUT, which travels back
bench() {  # bench SIDE LIMIT_S PYTHONPATH [args]
    local side=$1 limit=$2 path=$3 s=$SECONDS
    shift 3
    echo "=== $side side, limit ${limit} s" | tee -a "$LOG"
    PYTHONPATH=$path timeout -k 15 "$limit" python3 -m medusa.bench.gpu --side "$side" --out "$O" --ref_dir "$REF" "$@" \
        >> "$LOG" 2>&1
    echo "=== $side side rc=$? ($((SECONDS - s)) s)" | tee -a "$LOG"
}
# the torch side keeps the system numpy (2.x): transformers' imports (scipy, sklearn) need it;
# the numpy 1.26 in /tmp/site is for Jittor alone
bench torch "${TORCH_S:-200}" "$PWD" "$@"
bench jittor "$(( $(left) > 30 ? $(left) - 20 : 10 ))" "${PYTHONPATH:-$PWD}" "$@"
if [ "${GPU_CHECK:-0}" = 1 ] && [ "$(left)" -gt 120 ]; then
    C=$(mktemp -d)/gpu_check
    TEST_TIMEOUT=$(( $(left) - 60 )) SELF_CHECK=0 timeout -k 15 "$(( $(left) - 10 ))" \
        scripts/gpu_check.sh "$W" "$C" >> "$LOG" 2>&1
    echo "=== gpu_check rc=$?" | tee -a "$LOG"
    tar czf "$O/gpu_check.tgz" -C "$(dirname "$C")" gpu_check
fi
echo "=== total $SECONDS s" | tee -a "$LOG"
