"""medusa.bench.gpu on the CPU: the shared helpers, and a dry run of both sides plus the report."""
import json

import numpy as np
import pytest

from medusa.bench.gpu import common as gpu_bench
from medusa.cli import gpu_bench as gpu_bench_cli


def test_param_count_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    for shape in ("tiny", "smollm2-135m"):
        cfg = {k: v for k, v in gpu_bench.SHAPES[shape].items() if k != "model_type"}
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**cfg))
        assert gpu_bench.param_count(gpu_bench.SHAPES[shape]) == sum(p.numel() for p in model.parameters())


def test_vicuna_7b_is_13_5_gb_in_fp16():
    assert abs(2 * gpu_bench.param_count(gpu_bench.SHAPES["vicuna-7b"]) / 1e9 - 13.48) < 0.01


def test_tree_plan_flat_index_picks_each_nodes_candidate():
    buf, flat, kmax = gpu_bench.tree_plan("mc_sim_7b_63")
    K = gpu_bench.HEADS["num_heads"]
    top = np.arange(K * kmax).reshape(K, kmax) + 1000     # head d's c-th candidate: 1000 + d*kmax + c
    candidates = np.concatenate([[7], top.reshape(-1)])[flat]
    assert candidates[0] == 7
    for node, path in enumerate(buf.choices, start=1):
        assert candidates[node] == top[len(path) - 1, path[-1]]


def test_greedy_posterior_takes_the_longest_accepted_path():
    buf, _, _ = gpu_bench.tree_plan("8_node")
    node = {(): 0, **{p: i + 1 for i, p in enumerate(buf.choices)}}
    tokens = np.arange(100, 100 + buf.num_nodes)
    predictions = np.full(buf.num_nodes, -1)
    # the base model agrees with path [1, 0, 0]: root predicts node (1,)'s token, and so on
    predictions[0] = tokens[node[(1,)]]
    predictions[node[(1,)]] = tokens[node[(1, 0)]]
    predictions[node[(1, 0)]] = tokens[node[(1, 0, 0)]]
    got = gpu_bench.greedy_posterior(buf, tokens, predictions)
    assert got.tolist() == [0, node[(1,)], node[(1, 0)], node[(1, 0, 0)]]
    assert gpu_bench.greedy_posterior(buf, tokens, np.full(buf.num_nodes, -1)).tolist() == [0]


def test_stats_ms_and_early_stop():
    assert gpu_bench.stats_ms([0.001, 0.003, 0.002])["median_ms"] == pytest.approx(2.0)
    calls = []
    times = gpu_bench.timed_loop(lambda: calls.append(1), 100, lambda: None, limit_s=0.0)
    assert len(times) == len(calls) == 1


def test_dry_run_both_sides_and_report(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    args = ["--device", "cpu", "--dry_run", "--out", str(out)]
    assert gpu_bench_cli.main(["--side", "torch", *args]) == 0
    assert gpu_bench_cli.main(["--side", "jittor", *args]) == 0
    results = tmp_path / "gpu_bench.json"
    assert gpu_bench_cli.main(["--side", "report", "--out", str(out), "--results", str(results)]) == 0
    report = json.loads(results.read_text())
    tiny = report["runs"]["out"]["jittor"]["shapes"]["tiny"]
    assert tiny["check_vs_torch"]["ok"], tiny["check_vs_torch"]
    assert tiny["params"]["weights"] == "torch weights"
    summary = report["summary"]["tiny"]
    assert summary["decode_jittor_over_torch_median"] > 0
    for tree in ("8_node", "mc_sim_7b_63"):
        assert summary[f"medusa_{tree}"]["medusa_over_base_median"]["jittor"] > 0
        assert set(tiny[f"medusa_{tree}"]["parts_median_ms"]) == {"heads", "tree", "posterior", "update"}
        device_loop = tiny[f"medusa_{tree}_device_loop"]          # the same steps, on the device
        assert device_loop["mean_tokens_per_step"] == tiny[f"medusa_{tree}"]["mean_tokens_per_step"]
        assert set(device_loop["parts_median_ms"]) == {"tree"}
    assert summary["bandwidth_bound"]["bound_ms"] > 0
    assert results.with_suffix(".png").is_file()
    graphs = summary["torch_graphs"]                  # eager on a CPU: the same model as transformers
    assert graphs["check_vs_transformers"]["max_rel_err"] < 1e-4, graphs
    assert graphs["check_vs_transformers"]["argmax_agreement"] == 1.0
    assert graphs["decode_median_ms"] > 0 and graphs["tree_8_node"]["graphs_ms"] > 0
    assert summary["jittor_ops"]["decode_median_ms"] > 0


def test_graph_model_steps_equal_transformers_with_a_cache():
    """GraphStep (eager on a CPU) decodes like transformers: the same greedy tokens after a prompt."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from medusa.bench.gpu.common import SHAPES
    from medusa.bench.gpu.torch_graphs import GraphLlama, GraphStep, causal_mask

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in SHAPES["tiny"].items() if k != "model_type"})).eval()
    prompt = list(range(3, 12))
    with torch.inference_mode():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt):].tolist()
        model, P = GraphLlama(hf, 64), len(prompt)
        logits = model(torch.tensor(prompt), torch.arange(P), torch.arange(P), torch.as_tensor(causal_mask(P, 0, 64)))
        got, step = [int(logits[-1].argmax())], GraphStep(model, 1)
        for L in range(P, P + 5):
            got.append(int(step([got[-1]], [L], [L], _decode_mask(L, 64))[0].argmax()))
    assert got == want


def _decode_mask(L, max_len):
    import numpy as np

    m = np.zeros((1, 1, 1, max_len), bool)
    m[..., :L + 1] = True
    return m


def test_merge_runs_later_run_wins_and_names_its_source():
    from medusa.bench.gpu.report import merge_runs

    runs = {"run1": {"jittor": {"device": "a", "shapes": {"s": {"decode": 1, "medusa": 2}}}},
            "run2": {"jittor": {"device": "b", "shapes": {"s": {"decode": 3}}},
                     "torch": {"shapes": {"s": {"decode": 4}}}}}
    sides, sources = merge_runs(runs)
    assert sides["jittor"]["shapes"]["s"] == {"decode": 3, "medusa": 2} and sides["jittor"]["device"] == "b"
    assert sources["jittor"]["s"] == {"decode": "run2", "medusa": "run1"}
    assert sources["torch"]["s"] == {"decode": "run2"}
