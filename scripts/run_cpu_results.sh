#!/usr/bin/env bash
# Regenerate the committed CPU benchmark results (greedy, embedded SmolLM2, shipped heads):
#   results/<default name>.json + .png   the default command, 10 samples x 96 tokens
#   results/trees/tuned_medusa.json      the tree tuned for the Medusa heads on this machine
#   results/sweep/<family>_<tree>.json   head families x trees, N samples x TOKENS tokens
#   results/table.md                     the table of results/README.md
#
#   scripts/run_cpu_results.sh               # sweep at N=5 samples x TOKENS=64 new tokens
#   N=10 TOKENS=96 scripts/run_cpu_results.sh
#
# Every run passes --resume: an interrupted script continues where it stopped, and complete
# runs are only re-summarised. Delete the result files to measure from scratch. Base and
# Medusa alternate per sample inside each run, so a speedup is measured under the same load;
# absolute tokens/s want an otherwise idle machine (each file records the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5}
TOKENS=${TOKENS:-64}
HEADS=medusa/trained
common=(--greedy --device cpu --resume)

python test_medusa_benchmark.py "${common[@]}"       # the default: medusa heads, 8_node, 10 x 96

[ -f results/trees/tuned_medusa.json ] || \
    python -m medusa tune --device cpu --medusa_weights "$HEADS/smollm2_medusa.jtr" \
        --output results/trees/tuned_medusa.json

sweep() {  # sweep FAMILY TREE
    python test_medusa_benchmark.py "${common[@]}" --num_samples "$N" --max_new_tokens "$TOKENS" \
        --medusa_weights "$HEADS/smollm2_$1.jtr" --medusa_choices "$2" \
        --output "results/sweep/$1_$(basename "${2%.json}").json"
}
for family in medusa rnn moe; do sweep "$family" 8_node; done
sweep medusa results/trees/tuned_medusa.json
sweep medusa chain                                                     # top-1 chain, one node per head
for family in medusa rnn moe; do sweep "$family" mc_sim_7b_63; done   # 64 nodes: slow on a CPU

python -m medusa compare results/smollm2-135m-instruct_*.json results/sweep/*.json --markdown > results/table.md
cat results/table.md
