#!/usr/bin/env bash
# The files derived from the committed self-distilled data (data/selfdistill/: prompts, their
# chat-template ids and the base model's replies as ids), made again on a CPU in ~1 minute:
#
#   scripts/selfdistill_files.sh [DIR]     # default cache/selfdistill (ignored by git)
#
#   DIR/smollm2_<round>.jsonl          every round's replies as ShareGPT text (scripts/distill_ids.py
#                                      text; the sampled ones carry "temperature": 0.7)
#   DIR/smollm2_selfdistill_ids.npz    round 1's token samples: the 12k set, greedy + sampled
#   DIR/samples.npz                    every round's token samples, what the shipped heads trained on
#
# They are not committed: the ids are the data, and each call of the device tool carries the
# whole working tree, so every committed MiB is a MiB less for a model part (docs/gpu.md). Made
# from the ids, the text files were byte-identical to the ones committed before (December 3).
set -euo pipefail
cd "$(dirname "$0")/.."
D=data/selfdistill
O=${1:-cache/selfdistill}
mkdir -p "$O"
text() {   # text PROMPTS_FILE REPLIES_NAME
    python scripts/distill_ids.py text --prompts <(zcat "$D/$1.jsonl.gz") \
        --replies <(zcat "$D/smollm2_$2_ids.jsonl.gz") --output "$O/smollm2_$2.jsonl"
}
text prompts_12k 12k_greedy
text prompts_12k 2400_sampled_t07
python scripts/distill_ids.py samples --prompt_ids <(zcat $D/prompt_ids_12k.jsonl.gz) \
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
python scripts/distill_ids.py samples --prompt_ids <(zcat "${prompt_ids[@]}") --replies "${replies[@]}" \
    --end_id 2 --pad_id 2 --output "$O/samples.npz"
ls -l "$O"
