#!/usr/bin/env bash
# Heads at scale on one GPU without network or tokenizer, as back-to-back device calls that share
# /tmp while the machine stays warm (docs/gpu.md). Every stage is one call:
#
#   scripts/gpu_heads.sh keep DIR            # carry DIR (a part from `scripts/gpu_e2e.sh pack`: the wheels'
#                                            # .e2e/whl/*, the GGUF's .e2e/parts/*): copy it to /tmp/keep
#   scripts/gpu_heads.sh setup [DIR]         # carry the last wheel part: join, install Jittor into
#                                            # /tmp/site, patch it for CUDA 13 (scripts/gpu_e2e.sh setup)
#   scripts/gpu_heads.sh model DIR           # carry the last GGUF part: join the parts into /tmp/keep/model.gguf
#   scripts/gpu_heads.sh tok DIR             # carry DIR (the tokenizer files, scripts/gpu_e2e.sh pack): to /tmp/keep/tok
#   scripts/gpu_heads.sh instruct            # a new round of self-instruct prompts (medusa.training.self_instruct:
#                                            # NUM, SEED, FIRST_ID), copying none of the committed rounds
#                                            # (data/selfdistill/prompts_si_*), their greedy replies, then the
#                                            # token samples of the 12k set, every committed round and this one
#   scripts/gpu_heads.sh sample              # sampled replies (T=0.7) for a seeded share of the prompts,
#                                            # then all token samples (greedy + sampled) in one .npz
#   scripts/gpu_heads.sh train NAME FAMILY [train flags...]   # one head training (resumed if cut off)
#   scripts/gpu_heads.sh export NAME...      # every named run's best heads, log and metrics in one
#                                            # archive, $OUT/runs.tgz.aa, .ab, ... (15 MB parts: a
#                                            # file from $OUT may take 16 MiB); heads above the 10 MB
#                                            # a shipped file may take are stored in fp16 (head_io)
#
# Inputs in the working tree: data/selfdistill/prompt_ids_12k.jsonl.gz (scripts/distill_ids.py
# encode) and data/selfdistill/smollm2_12k_greedy_ids.jsonl.gz (the greedy replies' ids).
# Outputs under $OUT (what comes back): sampled_ids.jsonl, samples.npz, NAME.log (a training's filtered
# log; the whole one is /tmp/keep/runs/NAME.out), runs.tgz.* (`export`). Environment: LIMIT (seconds a training may run in
# this call, default 540; the trainer saves its state on SIGTERM and the next `train` call resumes),
# PICK (prompts sampled, 2400), TEMPERATURE (0.7), SEED (1).
#
# The machine is given back ~30 s after a call ends, and with it /tmp (wheels, model, hidden cache):
# measured twice, after calls that returned files. Chain what depends on /tmp in one call, e.g. the
# last part and the trainings, started in parallel once the first has written the hidden cache:
# (a samples file made by scripts/selfdistill_files.sh, carried as an ignored path):
#   scripts/gpu_heads.sh model DIR && cp cache/selfdistill/smollm2_selfdistill_ids.npz /tmp/keep/samples.npz &&
#   (LIMIT=470 scripts/gpu_heads.sh train rnn_soft rnn ... > /tmp/rnn.out 2>&1) & P=$!;
#   until ls /tmp/keep/hidden/*/index.npz; do sleep 2; done; scripts/gpu_heads.sh train moe_soft moe ...; wait $P
# Trainings in parallel on the one GPU share its time: 5 runs at once made ~14 optimizer steps/s
# together, as one run alone (batch 32; measured in December), so parallel runs buy no throughput,
# only fewer calls.
set -uo pipefail
cd "$(dirname "$0")/.."
K=/tmp/keep
OUT=${OUT:-/tmp/out}
mkdir -p "$K" "$OUT"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
[ -x /usr/local/cuda/bin/nvcc ] && export nvcc_path=/usr/local/cuda/bin/nvcc
stage=${1:?stage}
shift
case $stage in
setup | keep)
    scripts/gpu_e2e.sh "$stage" "$@"
    ;;
tok)
    mkdir -p "$K"/tok && cp "$1"/* "$K"/tok/ && ls -l "$K"/tok
    ;;
instruct)
    # the base model writes NUM new prompts from the seed requests (needs the tokenizer: `tok`), none
    # a near-copy of a committed round's, then answers each greedily in fp32; the samples hold the 12k
    # set's greedy and sampled replies, the committed rounds' replies and this round's
    rounds=(data/selfdistill/prompts_si_*.jsonl.gz)
    [ -e "${rounds[0]}" ] || rounds=()
    python3 -m medusa.training.self_instruct --output "$K"/si_prompts.jsonl --prompt_ids_output "$K"/si_prompt_ids.jsonl \
        --num "${NUM:-12000}" --seed "${SEED:-0}" --first_id "${FIRST_ID:-100000}" --batch_size "${SI_BATCH:-1024}" \
        --exclude medusa/prompts/bench_prompts.jsonl medusa/prompts/smollm2_prompts.jsonl "${rounds[@]}" \
        --device cuda --model "$K"/model.gguf --tokenizer "$K"/tok || exit 1
    python3 scripts/distill_ids.py decode --model "$K"/model.gguf --ids "$K"/si_prompt_ids.jsonl \
        --output "$K"/si_greedy_ids.jsonl --eos_ids 2 --pad_id 2 --max_new_tokens 192 \
        --batch_size "${REPLY_BATCH:-960}" --dtype float32 --device cuda || exit 1
    { zcat data/selfdistill/prompt_ids_12k.jsonl.gz data/selfdistill/prompt_ids_si_*.jsonl.gz
      cat "$K"/si_prompt_ids.jsonl; } > "$K"/all_prompt_ids.jsonl
    zcat data/selfdistill/smollm2_12k_greedy_ids.jsonl.gz > "$K"/greedy_ids.jsonl
    zcat data/selfdistill/smollm2_2400_sampled_t07_ids.jsonl.gz > "$K"/sampled_ids.jsonl
    replies=("$K"/greedy_ids.jsonl "$K"/sampled_ids.jsonl)
    for f in data/selfdistill/smollm2_si_*_greedy_ids.jsonl.gz; do
        [ -e "$f" ] && zcat "$f" > "$K/$(basename "$f" .gz)" && replies+=("$K/$(basename "$f" .gz)")
    done
    python3 scripts/distill_ids.py samples --prompt_ids "$K"/all_prompt_ids.jsonl \
        --replies "${replies[@]}" "$K"/si_greedy_ids.jsonl --end_id 2 --pad_id 2 \
        --output "$K"/samples.npz || exit 1
    cp "$K"/si_prompts.jsonl "$K"/si_prompt_ids.jsonl "$K"/si_greedy_ids.jsonl "$K"/samples.npz "$OUT"/
    ;;
model)
    cp "$1"/part.* "$K"/ && cat "$K"/part.* > "$K"/model.gguf && rm "$K"/part.* && md5sum "$K"/model.gguf
    ;;
sample)
    zcat data/selfdistill/prompt_ids_12k.jsonl.gz > "$K"/prompt_ids.jsonl
    zcat data/selfdistill/smollm2_12k_greedy_ids.jsonl.gz > "$K"/greedy_ids.jsonl
    python3 scripts/distill_ids.py decode --model "$K"/model.gguf --ids "$K"/prompt_ids.jsonl \
        --output "$K"/sampled_ids.jsonl --eos_ids 2 --pad_id 2 --max_new_tokens 192 --batch_size 480 \
        --dtype float32 --device cuda --temperature "${TEMPERATURE:-0.7}" --seed "${SEED:-1}" --pick "${PICK:-2400}" \
        || exit 1
    python3 scripts/distill_ids.py samples --prompt_ids "$K"/prompt_ids.jsonl \
        --replies "$K"/greedy_ids.jsonl "$K"/sampled_ids.jsonl --end_id 2 --pad_id 2 --output "$K"/samples.npz \
        || exit 1
    cp "$K"/sampled_ids.jsonl "$K"/samples.npz "$OUT"/
    ;;
train)
    name=$1 family=$2
    shift 2
    script=train_ddp.py
    [ "$family" = rnn ] && script=train_rnn.py
    [ "$family" = moe ] && script=train_moe.py
    run=$K/runs/$name
    mkdir -p "$K"/runs
    resume=()
    [ -f "$run/last_state.npz" ] && resume=(--resume)
    # python's output to a file, not a pipe: forked compile workers can hold a pipe open past the
    # limit, and a run that saved its state on SIGTERM has been seen to hang at exit on the GPU
    # (-k: killed 30 s after the TERM; the state is already written and the next call resumes)
    timeout -k 30 -s TERM "${LIMIT:-540}" python3 "$script" --base_model_path "$K"/model.gguf --base_dtype float32 \
        --data_path "$K"/samples.npz --cache_dir "$K"/hidden --output_dir "$run" --device cuda "${resume[@]}" "$@" \
        >> "$run.out" 2>&1
    echo "$name: exit $?"
    tr '\r' '\n' < "$run.out" | grep -v -E '^\s*$' | awk 'NR % 20 == 1 || /val|error|Error|best|interrupted|early/' \
        > "$OUT/$name.log"
    ls -l "$run"
    ;;
export)
    rm -rf "$K"/export && mkdir -p "$K"/export
    for name in "$@"; do
        run=$K/runs/$name d=$K/export/$name
        [ -f "$run"/best.jtr ] || { echo "$name: no best.jtr yet"; continue; }
        mkdir -p "$d" && cp "$run"/best_config.json "$run"/metrics.jsonl "$run"/train_args.json "$d"/
        cp "$OUT/$name.log" "$d"/train.log 2>/dev/null
        if [ "$(stat -c %s "$run"/best.jtr)" -gt 10000000 ]; then
            python3 -m medusa.heads.io "$run"/best.jtr "$d"/best.jtr --dtype float16
        else
            cp "$run"/best.jtr "$d"/
        fi
    done
    tar -C "$K"/export -czf - . | split -b 15M - "$OUT"/runs.tgz.
    ls -l "$OUT"
    ;;
*)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
