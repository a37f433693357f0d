"""GPU benchmark: one decode step and one Medusa step, our Jittor model vs PyTorch transformers.

Imports go one way: common (shared definitions) <- jittor_side, torch_side, report <- cli.

    python -m medusa gpu-bench --side torch  --out OUT      # transformers baseline + copy bandwidth
    python -m medusa gpu-bench --side jittor --out OUT      # our model, same shapes, same GPU
    python -m medusa gpu-bench --side report --runs OUT [OUT2 ...] --results results/gpu_bench.json
    scripts/gpu_run.sh WHEELHOUSE   # both sides after the install, set-up and GPU tests (docs/gpu.md)

Each side runs in its own process (Jittor's runtime never imports torch) and rewrites
OUT/gpu_<side>.json after every measurement, so a run cut off by a time limit still leaves data.
The torch side saves the weights of every shape in CHECKED_SHAPES (SmolLM2-135M) and its logits
on one prompt into REF_DIR/<shape>; the Jittor side loads those exact weights, compares its logits
with them, then times with them. Larger shapes get seeded random weights on each side: speed
does not depend on the values.

What one "Medusa step" is here: heads on the last accepted hidden state (4 Medusa-1 heads, 1 ResBlock
each, sharing the base lm_head) -> top-k per head -> tree candidates -> one tree forward of the N
tree nodes with the tree mask over the KV cache -> greedy posterior on the host -> KV-cache
compaction of the accepted path. The Jittor side runs medusa.decoding.steps' own step functions
(propose / tree_decode / evaluate_posterior / update_inputs, as medusa_stream does); the torch side
writes the same step with transformers (MedusaStep in torch_side.py, with tree_plan and
greedy_posterior in common.py).

`--dry_run` runs both sides with a tiny model and few steps (CPU is fine).
"""
