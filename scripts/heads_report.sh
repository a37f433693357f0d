#!/usr/bin/env bash
# Tokens per step of the shipped SmolLM2 heads (medusa/trained/), as their model cards report them:
# greedy, CPU fp32, the bench prompt set, 10 prompts x 128 new tokens, base and Medusa in one run
# (outputs checked identical). Tunes each family's CPU tree first (python -m medusa tune writes
# medusa/trained/smollm2_<family>_tree_cpu.json, what --medusa_choices auto picks; tuned with
# the draft vocabulary medusa/trained/draft_vocab.json, which --draft_vocab auto takes on a CPU),
# then benchmarks each family with the defaults (auto: the tuned tree and the draft vocabulary),
# and with chain, 8_node and mc_sim_7b_63 over the whole vocabulary (--draft_vocab none: what the
# heads accept, not what a draft subset costs).
#   scripts/heads_report.sh            # results/heads/<family>_<tree>.json, table.md, tokens_per_step.png
# Runs pass --resume: a cut-off script continues; delete a file to measure it again.
set -euo pipefail
cd "$(dirname "$0")/.."
HEADS=medusa/trained
O=results/heads
mkdir -p "$O"
for family in medusa rnn moe; do
    [ -f "$HEADS/smollm2_${family}_tree_cpu.json" ] || \
        python -m medusa tune --device cpu --medusa_weights "$HEADS/smollm2_$family.jtr"
done
for family in medusa rnn moe; do
    for tree in auto chain 8_node mc_sim_7b_63; do
        draft=()                         # the presets measure the heads over the whole vocabulary
        [ "$tree" = auto ] || draft=(--draft_vocab none)
        python test_medusa_benchmark.py --greedy --device cpu --resume --no_plot --num_samples 10 \
            --max_new_tokens 128 --medusa_weights "$HEADS/smollm2_$family.jtr" --medusa_choices "$tree" \
            "${draft[@]}" --output "$O/${family}_${tree}.json"
    done
done
rm -f "$O/tokens_per_step.png"          # derived from the JSONs: made again
python -m medusa compare "$O"/*.json --markdown --png "$O/tokens_per_step.png" > "$O/table.md"
cat "$O/table.md"
