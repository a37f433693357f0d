"""Merge the two sides of medusa.bench.gpu into one results JSON with the ratios asked for, and a
bar chart beside it (same name, .png)."""
import json
from pathlib import Path

from medusa.bench.gpu.common import SHAPES, param_count, write_json


def _stat(side: dict, shape: str, key: str, stat: str):
    return (side.get("shapes", {}).get(shape, {}).get(key) or {}).get(stat)


def _ratio(a, b):
    return a / b if a and b else None


def _pair(jittor, torch, shape, key, stat):
    return {"jittor": _stat(jittor, shape, key, stat), "torch": _stat(torch, shape, key, stat)}


def _graphs_and_before(jittor: dict, torch: dict, shape, trees) -> dict:
    """The torch CUDA-graph side (torch_graphs.py) against Jittor's decode and tree steps, and
    Jittor's decode with its own ops (before the fused kernels), from the medians."""
    out = {}
    jd = _stat(jittor, shape, "decode", "median_ms")
    before = _stat(jittor, shape, "decode_jittor_ops", "median_ms")
    if before:
        out["jittor_ops"] = {"decode_median_ms": before, "fused_kernels_speedup": _ratio(before, jd)}
    six = _stat(jittor, shape, "decode_six_ops", "median_ms")
    if six:
        out["layer_op"] = {"decode_six_ops_median_ms": six, "layer_op_speedup": _ratio(six, jd)}
    cublas = _stat(jittor, shape, "decode_cublas_gemv", "median_ms")
    if cublas:
        out["cublas_gemv"] = {"decode_median_ms": cublas, "over_default_decode": _ratio(cublas, jd)}
    for tree in trees:                          # the greedy step as one graph with one fetch
        whole = _stat(jittor, shape, f"medusa_{tree}_device_loop", "median_ms")
        if whole:
            out.setdefault("device_loop", {})[tree] = {"step_median_ms": whole,
                                                       "step_over_decode": _ratio(whole, jd)}
    graphs = (torch.get("shapes", {}).get(shape, {}).get("torch_graphs")) or {}
    g = (graphs.get("graph_decode") or {}).get("median_ms")
    if not g:
        return out
    entry = {"decode_median_ms": g, "jittor_decode_over_graphs": _ratio(jd, g),
             "check_vs_transformers": graphs.get("check_vs_transformers")}
    for tree in trees:
        t = (graphs.get(f"graph_tree_{tree}") or {}).get("median_ms")
        parts = (jittor.get("shapes", {}).get(shape, {}).get(f"medusa_{tree}") or {}).get("parts_median_ms") or {}
        jt_tree = parts.get("tree")
        entry[f"tree_{tree}"] = {"graphs_ms": t, "graphs_over_graphs_decode": _ratio(t, g),
                                 "jittor_tree_part_ms": jt_tree, "jittor_tree_over_jittor_decode": _ratio(jt_tree, jd),
                                 "jittor_tree_over_graphs_tree": _ratio(jt_tree, t)}
    out["torch_graphs"] = entry
    return out


def summarize(jittor: dict, torch: dict, trees) -> dict:
    """Jittor/torch step-time ratios, Medusa-step/base-step ratios, and the bandwidth bound, from
    the medians and (less sensitive to a noisy host) the 10th percentiles of the step times."""
    out = {}
    copy = torch.get("shapes", {}).get("_device", {}).get("copy_bandwidth", {})
    gbps = copy.get("GBps_read_plus_write")
    for shape in [s for s in SHAPES if s in jittor.get("shapes", {}) or s in torch.get("shapes", {})]:
        cfg, entry = SHAPES[shape], {}
        for stat, name in (("median_ms", "median"), ("p10_ms", "p10")):
            base = _pair(jittor, torch, shape, "decode", stat)
            entry[f"decode_{name}_ms"] = base
            entry[f"decode_jittor_over_torch_{name}"] = _ratio(base["jittor"], base["torch"])
            for tree in trees:
                step = _pair(jittor, torch, shape, f"medusa_{tree}", stat)
                entry.setdefault(f"medusa_{tree}", {}).update({
                    f"step_{name}_ms": step, f"jittor_over_torch_{name}": _ratio(step["jittor"], step["torch"]),
                    f"medusa_over_base_{name}": {side: _ratio(step[side], base[side]) for side in step}})
        entry.update(_graphs_and_before(jittor, torch, shape, trees))
        weight_bytes = 2 * param_count(cfg)                      # fp16
        untied_embedding = 0 if cfg["tie_word_embeddings"] else 2 * cfg["vocab_size"] * cfg["hidden_size"]
        if gbps:
            bound = weight_bytes / gbps / 1e6                     # ms
            entry["bandwidth_bound"] = {
                "weight_bytes_fp16": weight_bytes, "copy_GBps": gbps, "bound_ms": bound,
                # a decode step reads one row of an untied embedding table, not all of it
                "bound_ms_without_embedding_table": (weight_bytes - untied_embedding) / gbps / 1e6,
                "decode_median_over_bound": {side: _ratio(ms, bound) for side, ms in entry["decode_median_ms"].items()},
                "decode_p10_over_bound": {side: _ratio(ms, bound) for side, ms in entry["decode_p10_ms"].items()}}
        out[shape] = entry
    return out


def plot(summary: dict, trees, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [s for s in summary if s != "tiny"] or list(summary)
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4), squeeze=False)
    labels = ["decode"] + [f"Medusa\n{t}" for t in trees]
    for ax, shape in zip(axes[0], shapes):
        entry = summary[shape]
        graphs = entry.get("torch_graphs", {})
        rows = [dict(entry["decode_median_ms"], graphs=graphs.get("decode_median_ms"))] + [
            dict(entry[f"medusa_{t}"]["step_median_ms"], graphs=(graphs.get(f"tree_{t}") or {}).get("graphs_ms"))
            for t in trees]
        lows = [entry["decode_p10_ms"]] + [entry[f"medusa_{t}"]["step_p10_ms"] for t in trees]
        names = {"jittor": "jittor", "torch": "torch transformers (eager)",
                 "graphs": "torch CUDA graphs (tree forward only)"}
        # a side this run did not measure gets no bars (not bars of height 0)
        present = [side for side in ("jittor", "torch", "graphs") if any(r.get(side) for r in rows)]
        for k, side in enumerate(present):
            values = [r.get(side) or 0 for r in rows]
            x = [i + 0.27 * k for i in range(len(rows))]
            bars = ax.bar(x, values, 0.27, label=names[side])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            if side != "graphs":
                ax.scatter(x, [r.get(side) or 0 for r in lows], marker="_", color="k", s=80,
                           label="10th percentile" if k == 0 else None)
        if "bandwidth_bound" in entry and shape == "vicuna-7b":
            ax.axhline(entry["bandwidth_bound"]["bound_ms"], color="k", ls="--", lw=1, label="bandwidth bound")
        ax.set_xticks([i + 0.27 * (len(present) - 1) / 2 for i in range(len(rows))], labels)
        ax.set_ylabel("ms per step (bar: median)")
        missing = {"torch": "eager", "graphs": "CUDA graphs"}
        missing = [missing[side] for side in missing if side not in present]
        ax.set_title(f"{shape}, batch 1, fp16" + (f"\n(torch {' / '.join(missing)}: not in this run)"
                                                 if missing else ""), fontsize=10)
        ax.set_ylim(0, 1.35 * max(v or 0 for r in rows for v in r.values()) or 1)
        ax.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_runs(runs: dict) -> tuple:
    """Fold the runs ({label: {side: json}}, in order) into one dict per side: a later run's
    measurement replaces an earlier one's. Returns (sides, sources), sources[side][shape][key]
    naming the run each measurement comes from."""
    sides, sources = {}, {}
    for label, run in runs.items():
        for side, data in run.items():
            merged = sides.setdefault(side, {"shapes": {}})
            merged.update({k: v for k, v in data.items() if k not in ("shapes", "errors")})
            for shape, entries in data.get("shapes", {}).items():
                merged["shapes"].setdefault(shape, {}).update(entries)
                sources.setdefault(side, {}).setdefault(shape, {}).update({k: label for k in entries})
    return sides, sources


def write_report(run_dirs, results_path, notes=()):
    """Merge the gpu_<side>.json of each folder of run_dirs (later runs win) into results_path."""
    results_path = Path(results_path)
    runs = {}
    for folder in map(Path, run_dirs):
        runs[folder.name] = {side: json.loads((folder / f"gpu_{side}.json").read_text())
                             for side in ("jittor", "torch") if (folder / f"gpu_{side}.json").is_file()}
    config_path = Path(run_dirs[-1]) / "gpu_jittor_config.json"
    settings = json.loads(config_path.read_text()) if config_path.is_file() else {}
    trees = settings.get("trees", ["8_node", "mc_sim_7b_63"])
    sides, sources = merge_runs(runs)
    summary = summarize(sides.get("jittor", {}), sides.get("torch", {}), trees)
    report = {"device": sides.get("torch", {}).get("device") or sides.get("jittor", {}).get("device"),
              "notes": list(notes), "settings": settings, "summary": summary, "sources": sources,
              "runs": runs}
    write_json(results_path, report)
    if summary:
        plot(summary, trees, results_path.with_suffix(".png"))
    print(json.dumps(summary, indent=1))
    return report
