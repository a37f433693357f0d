#!/usr/bin/env bash
# Regenerate the committed CPU benchmark results: results/*.json + *.png, the tuned tree in
# results/trees/, and results/table.md (the table of results/README.md).
#
#   scripts/run_cpu_results.sh              # N=10 samples x TOKENS=96 new tokens, greedy
#   N=5 TOKENS=64 scripts/run_cpu_results.sh
#
# Every run passes --resume: an interrupted script continues where it stopped, and runs that
# are complete are only re-summarised. Delete results/*.json to measure from scratch.
# Run it on an otherwise idle machine: base and Medusa alternate per sample inside each run,
# so the speedup is fair under load, but absolute tokens/s are not.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10}
TOKENS=${TOKENS:-96}
HEADS=medusa/trained
bench() {  # bench FAMILY TREE
    python test_medusa_benchmark.py --greedy --device cpu --num_samples "$N" --max_new_token "$TOKENS" \
        --medusa_weights "$HEADS/smollm2_$1.jtr" --medusa_choices "$2" --resume
}

# The tree tuned for the Medusa heads on this machine (head accuracy + measured step times).
[ -f results/trees/tuned_medusa.json ] || \
    python -m medusa.tune --device cpu --medusa_weights "$HEADS/smollm2_medusa.jtr" \
        --max_new_token "$TOKENS" --output results/trees/tuned_medusa.json
bench medusa 8_node
bench medusa results/trees/tuned_medusa.json
for family in rnn moe; do bench "$family" 8_node; done
for family in medusa rnn moe; do bench "$family" mc_sim_7b_63; done

python -m medusa.compare results/*.json --markdown > results/table.md
cat results/table.md
