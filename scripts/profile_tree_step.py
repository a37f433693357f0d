"""Where a tree-verification step's time goes on this machine: Jittor's profiler around the base
model verifying T tree tokens (a causal block, like a chain of T nodes) on a KV cache of a prompt,
fp32, embedded SmolLM2, plus the vocab projection of every row.

    python scripts/profile_tree_step.py              # T = 64 (mc_sim_7b_63's size)
    python scripts/profile_tree_step.py --rows 9     # an 8_node tree

Prints the median wall time of a step, then the ops by total time per step (the compiled
`code` ops are medusa/kernels/cpu.py's: the few-rows matmul and the fused attention).
"""
import argparse
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64, help="tree tokens verified per step (1..64)")
    p.add_argument("--prompt_tokens", type=int, default=42)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=12, help="ops listed")
    args = p.parse_args(argv)
    if not 1 <= args.rows <= 64 or args.prompt_tokens < 1 or args.repeats < 1:
        from medusa.runtime.errors import UsageError
        raise UsageError("--rows must be in 1..64, --prompt_tokens and --repeats >= 1")

    from medusa.decoding import core
    from medusa.model import weights
    from medusa.model.transformer import build_mask
    from medusa.runtime.backend import jt

    src, _ = weights.resolve_model(None, None, "float32")
    model = weights.load_model(src, "float32")
    P, T = args.prompt_tokens, args.rows
    tree = np.tril(np.ones((T, T), np.float32))
    with jt.no_grad():
        cache = core.new_cache(model, 1, P + T)
        core.forward(model, np.arange(100, 100 + P)[None], np.arange(P)[None], build_mask(1, P, 0), cache).sync()

        def step():
            L = cache.length
            hidden = core.forward(model, np.arange(5, 5 + T)[None], (L + np.arange(T))[None].astype(np.int32),
                                  build_mask(1, T, L, tree=tree), cache)
            model.logits(hidden).sync()
            cache.length = L                     # verify the same tokens again next time

        for _ in range(3):                       # compile
            step()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        print(f"{T}-row step: {np.median(times) * 1e3:.1f} ms (median of {args.repeats})")
        jt.profiler.start(0, 0)
        for _ in range(args.repeats):
            step()
        jt.profiler.stop()
    header, *rows = jt.profiler.report()
    total, name, count = header.index("TotalTime"), header.index("Name"), header.index("Count")
    rows.sort(key=lambda r: -float(r[total]))
    print(f"profiled: {sum(float(r[total]) for r in rows) / args.repeats / 1e6:.1f} ms per step")
    for r in rows[:args.top]:
        label = r[name].replace("\n", " ")[:110]
        print(f"{float(r[total]) / args.repeats / 1e6:8.2f} ms  {int(r[count]) // args.repeats:4d} calls  {label}")


if __name__ == "__main__":
    from medusa import cli

    cli.run(main)
