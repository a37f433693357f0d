#!/usr/bin/env bash
# The training inputs of the shipped SmolLM2 heads, made from the committed self-distilled data
# (data/selfdistill/: the prompts as text, their chat-template token ids and the base model's
# replies as token ids; data/README.md). On a CPU, ~1 minute, no model run: only the tokenizer.
#
#   scripts/make_training_data.sh [OUT_DIR]       # default cache/selfdistill (ignored by git)
#
#   OUT_DIR/smollm2_<round>.jsonl          each round's replies as ShareGPT text (what `medusa train
#                                          --data_path` and `medusa vocab build` read; the sampled
#                                          replies carry "temperature": 0.7)
#   OUT_DIR/smollm2_selfdistill_ids.npz    round 1's token samples: the 12k prompts, greedy + sampled
#                                          (14,400 samples), what the moe heads trained on
#   OUT_DIR/samples.npz                    every round's token samples (68,400), what the rnn heads of
#                                          the last round trained on
#
# The .npz files hold the exact tokens (prompt, reply, end-of-turn) the trainer reads without a
# tokenizer (scripts/distill_ids.py samples). The ids are what is committed: the text is 11 MB
# gzipped on top of them and follows from them byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
D=data/selfdistill
O=${1:-cache/selfdistill}
PY=${PY:-python}
mkdir -p "$O"
text() {   # text PROMPTS_NAME REPLIES_NAME
    "$PY" scripts/distill_ids.py text --prompts <(zcat "$D/$1.jsonl.gz") \
        --replies <(zcat "$D/smollm2_$2_ids.jsonl.gz") --output "$O/smollm2_$2.jsonl"
}
text prompts_12k 12k_greedy
text prompts_12k 2400_sampled_t07
"$PY" scripts/distill_ids.py samples --prompt_ids <(zcat $D/prompt_ids_12k.jsonl.gz) \
    --replies $D/smollm2_12k_greedy_ids.jsonl.gz $D/smollm2_2400_sampled_t07_ids.jsonl.gz \
    --end_id 2 --pad_id 2 --output "$O/smollm2_selfdistill_ids.npz"
prompt_ids=("$D/prompt_ids_12k.jsonl.gz")
replies=("$D/smollm2_12k_greedy_ids.jsonl.gz" "$D/smollm2_2400_sampled_t07_ids.jsonl.gz")
for f in "$D"/prompts_si_*.jsonl.gz; do       # the self-instruct rounds, in the order they were made
    name=$(basename "$f" .jsonl.gz)
    name=${name#prompts_}                     # si_12k, si_18k_s1, si_24k_s2, ...
    text "prompts_$name" "${name}_greedy"
    prompt_ids+=("$D/prompt_ids_$name.jsonl.gz")
    replies+=("$D/smollm2_${name}_greedy_ids.jsonl.gz")
done
"$PY" scripts/distill_ids.py samples --prompt_ids <(zcat "${prompt_ids[@]}") --replies "${replies[@]}" \
    --end_id 2 --pad_id 2 --output "$O/samples.npz"
ls -l "$O"
