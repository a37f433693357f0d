#!/usr/bin/env bash
# Draft heads for the embedded SmolLM2-135M-Instruct on one GPU, the way the shipped heads were made:
# self-distilled data from the base model, then the trainings (medusa/trained/ gives each file's
# recipe). Run in the checkout, after scripts/gpu_run.sh installed the environment (or anywhere
# Jittor works on the GPU: PY names the python).
#
#   scripts/gpu_heads.sh instruct            # a new round of self-instruct prompts (NUM, SEED, FIRST_ID), none
#                                            # a near-copy of a committed round's, their greedy replies, then
#                                            # WORK/samples.npz: every committed round's samples and this round's
#   scripts/gpu_heads.sh sample              # replies sampled at TEMPERATURE for PICK of the 12k prompts, then
#                                            # WORK/samples.npz: the 12k set's greedy and these sampled replies
#   scripts/gpu_heads.sh train NAME FAMILY [flags...]   # `medusa train --head_family FAMILY` on WORK/samples.npz
#                                            # into WORK/runs/NAME (resumed when its state is there)
#   scripts/gpu_heads.sh export DEST NAME... # each run's best heads, config, metrics and log into DEST/NAME/
#
# Without `instruct` or `sample`, `train` uses every committed round (scripts/make_training_data.sh
# makes WORK/samples.npz). The recipe of the shipped rnn heads, for example:
#   scripts/gpu_heads.sh train rnn rnn --preset medusa1 --batch_size 32 --gradient_accumulation_steps 1 \
#       --epochs 3 --loss hard --prefix_layer --medusa_num_layers 0
# Trainings started side by side share the GPU's time: five at once made ~14 optimizer steps/s
# together, as many as one alone (batch 32, December), so they buy no throughput.
#
# Environment: PY (~/.venvs/medusa-jittor/bin/python when there, else python), WORK (cache/gpu_heads),
# MODEL (the file the replies are decoded with; default the embedded GGUF), BASE (the trainings'
# model flags; default the embedded model converted in fp32, as scripts/gpu_run.sh leaves it), LIMIT (seconds a training may run; it saves
# its state on SIGTERM and the next `train` resumes), NUM (12000), SEED (0), FIRST_ID (100000),
# PICK (2400), TEMPERATURE (0.7), DEVICE (cuda; cpu makes a slow dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
D=data/selfdistill
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-cache/gpu_heads}
venv_py=${VENV:-$HOME/.venvs/medusa-jittor}/bin/python
PY=${PY:-$( [ -x "$venv_py" ] && echo "$venv_py" || echo python)}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then
    export nvcc_path=""                 # a CPU machine's nvcc must not make Jittor try CUDA
else
    [ -n "${nvcc_path:-}" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || export nvcc_path=/usr/local/cuda/bin/nvcc
fi
MODEL=${MODEL:-$("$PY" -c "from medusa.model import weights; print(weights.default_gguf_path())")} || exit 1
stage=${1:?stage: instruct, sample, train or export}
shift
# greedy (or sampled) fp32 replies of at most 192 tokens, as every committed round's; the end of a
# SmolLM2 turn is token 2, which also pads
decode() { "$PY" scripts/distill_ids.py decode --model "$MODEL" --eos_ids 2 --pad_id 2 --max_new_tokens 192 \
               --dtype float32 --device "$DEVICE" "$@"; }
samples() { "$PY" scripts/distill_ids.py samples --end_id 2 --pad_id 2 "$@"; }
case $stage in
instruct)
    rounds=("$D"/prompts_si_*.jsonl.gz)
    [ -e "${rounds[0]}" ] || rounds=()
    "$PY" -m medusa self-instruct --output "$WORK"/si_prompts.jsonl --prompt_ids_output "$WORK"/si_prompt_ids.jsonl \
        --num "${NUM:-12000}" --seed "${SEED:-0}" --first_id "${FIRST_ID:-100000}" --batch_size "${SI_BATCH:-1024}" \
        --exclude medusa/prompts/bench_prompts.jsonl medusa/prompts/smollm2_prompts.jsonl "${rounds[@]}" \
        --device "$DEVICE" || exit 1
    decode --ids "$WORK"/si_prompt_ids.jsonl --output "$WORK"/si_greedy_ids.jsonl --batch_size "${REPLY_BATCH:-960}" \
        || exit 1
    replies=("$D"/smollm2_12k_greedy_ids.jsonl.gz "$D"/smollm2_2400_sampled_t07_ids.jsonl.gz)
    for f in "${rounds[@]}"; do
        name=$(basename "$f" .jsonl.gz)
        replies+=("$D/smollm2_${name#prompts_}_greedy_ids.jsonl.gz")
    done
    samples --prompt_ids <(zcat "$D"/prompt_ids_12k.jsonl.gz "$D"/prompt_ids_si_*.jsonl.gz; cat "$WORK"/si_prompt_ids.jsonl) \
        --replies "${replies[@]}" "$WORK"/si_greedy_ids.jsonl --output "$WORK"/samples.npz || exit 1
    echo "new round in $WORK: si_prompts.jsonl, si_prompt_ids.jsonl, si_greedy_ids.jsonl (gzip them into $D/ as"
    echo "prompts_si_<name>, prompt_ids_si_<name> and smollm2_si_<name>_greedy_ids to keep them), samples.npz"
    ;;
sample)
    zcat "$D"/prompt_ids_12k.jsonl.gz > "$WORK"/prompt_ids_12k.jsonl
    decode --ids "$WORK"/prompt_ids_12k.jsonl --output "$WORK"/sampled_ids.jsonl --batch_size 480 \
        --temperature "${TEMPERATURE:-0.7}" --seed "${SEED:-1}" --pick "${PICK:-2400}" || exit 1
    samples --prompt_ids "$WORK"/prompt_ids_12k.jsonl \
        --replies "$D"/smollm2_12k_greedy_ids.jsonl.gz "$WORK"/sampled_ids.jsonl --output "$WORK"/samples.npz || exit 1
    ;;
train)
    name=${1:?train NAME FAMILY [flags...]} family=${2:?train NAME FAMILY [flags...]}
    shift 2
    if [ ! -f "$WORK"/samples.npz ]; then
        PY=$PY scripts/make_training_data.sh "$WORK"/committed > /dev/null || exit 1
        ln -sf committed/samples.npz "$WORK"/samples.npz
    fi
    # the fp32 unit rather than the GGUF: converting a GGUF reads its tokenizer through PyTorch
    BASE=${BASE:---jittor_base_weights $("$PY" -c "from medusa.model import weights
print(weights.ensure_default_model('float32', verbose=False))")} || exit 1
    run=$WORK/runs/$name
    mkdir -p "$WORK"/runs
    resume=()
    [ -f "$run/last_state.npz" ] && resume=(--resume)
    limit=()
    [ -n "${LIMIT:-}" ] && limit=(timeout -k 30 -s TERM "$LIMIT")
    # the log to a file, not a pipe: Jittor's forked compile workers can hold a pipe open
    # shellcheck disable=SC2086
    "${limit[@]}" "$PY" -m medusa train --head_family "$family" $BASE --dtype float32 \
        --data_path "$WORK"/samples.npz --cache_dir "$WORK"/hidden --output_dir "$run" --device "$DEVICE" \
        "${resume[@]}" "$@" >> "$run.log" 2>&1
    rc=$?
    echo "$name: exit $rc (log $run.log)"
    tr '\r' '\n' < "$run.log" | grep -E 'val|best|error|Error|interrupted|early' | tail -5
    exit $rc
    ;;
export)
    dest=${1:?export DEST NAME...}
    shift
    for name in "$@"; do
        run=$WORK/runs/$name d=$dest/$name
        [ -f "$run"/best.jtr ] || { echo "$name: no best.jtr yet"; continue; }
        mkdir -p "$d" && cp "$run"/best_config.json "$run"/metrics.jsonl "$run"/train_args.json "$d"/ || exit 1
        cp "$run.log" "$d"/train.log 2> /dev/null
        rm -f "$d"/best.jtr
        # heads shipped in medusa/trained/ stay under 10 MB a file: larger ones are stored in fp16
        # (they compute in fp32 either way)
        if [ "$(stat -c %s "$run"/best.jtr)" -gt 10000000 ]; then
            "$PY" -m medusa heads "$run"/best.jtr "$d"/best.jtr --dtype float16 || exit 1
        else
            cp "$run"/best.jtr "$d"/
        fi
        ls -l "$d"
    done
    ;;
*)
    echo "unknown stage $stage (instruct, sample, train, export)" >&2
    exit 2
    ;;
esac
