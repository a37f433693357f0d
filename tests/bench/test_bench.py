"""Benchmark: prompt-set formats (prompt_sets.py), summaries and tables (results.py, compare.py),
runs on a tiny model (bench.py): resume, greedy identity, multi-turn."""
import dataclasses
import json

import numpy as np
import pytest

from medusa.app import results
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.bench import benchmark as bench
from medusa.cli import compare as compare_cmd
from medusa.data import prompt_sets
from medusa.data.samples import DataError
from medusa.decoding.tree import load_choices

# ---------------------------------------------------------------- prompt sets
MT_BENCH = [{"question_id": 81, "category": "writing", "turns": ["Write a blog post.", "Now make it rhyme."]},
            {"question_id": 82, "category": "math", "turns": ["What is 2 + 2?"]}]
SHAREGPT = [{"id": "a1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                           {"from": "human", "value": "How are you?"}, {"from": "gpt", "value": "Fine"}]},
            {"id": "a2", "conversations": []},   # empty: skipped, as in real ShareGPT dumps
            {"id": "a3", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Name a colour."},
                                      {"role": "assistant", "content": "Red."}]}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_mt_bench_all_turns(tmp_path):
    path = write_jsonl(tmp_path / "question.jsonl", MT_BENCH)
    for fmt in ("auto", "mt_bench"):
        prompts = prompt_sets.load_prompt_set(path, fmt)
        assert [p.id for p in prompts] == [81, 82]
        assert prompts[0].turns == MT_BENCH[0]["turns"] and prompts[0].category == "writing"


@pytest.mark.parametrize("as_array", [False, True])
def test_sharegpt_user_turns_and_system(tmp_path, as_array):
    path = tmp_path / "sharegpt.json"
    if as_array:
        path.write_text(json.dumps(SHAREGPT, indent=2))
    else:
        write_jsonl(path, SHAREGPT)
    prompts = prompt_sets.load_prompt_set(path)
    assert [p.id for p in prompts] == ["a1", "a3"]
    assert prompts[0].turns == ["Hi", "How are you?"] and prompts[0].category == "sharegpt"
    assert prompts[1].turns == ["Name a colour."] and prompts[1].system == "Be brief."


def test_shipped_prompts_load():
    prompts = prompt_sets.load_prompt_set(prompt_sets.DEFAULT_PROMPTS)
    assert len(prompts) == 20 and all(len(p.turns) == 1 for p in prompts)


def test_spread_over_categories():
    prompts = [prompt_sets.BenchPrompt(i, c, ["x"]) for i, c in enumerate("aaabbc")]
    assert [p.id for p in prompt_sets.spread_over_categories(prompts, 4)] == [0, 3, 5, 1]
    assert [p.id for p in prompt_sets.spread_over_categories(prompts, 9)] == [0, 3, 5, 1, 4, 2]
    shipped = prompt_sets.spread_over_categories(prompt_sets.load_prompt_set(prompt_sets.DEFAULT_PROMPTS), 10)
    assert len({p.category for p in shipped}) == 10


def test_categories_are_the_files_own(tmp_path):
    """A user's own category name is a label like any other (it used to be refused)."""
    path = write_jsonl(tmp_path / "mine.jsonl", [{"id": 1, "category": "invoices_json", "prompt": "x"}])
    assert prompt_sets.load_prompt_set(path)[0].category == "invoices_json"


@pytest.mark.parametrize("lines, fmt, message", [
    (['{"question_id": 1, "turns": ["a"]}', '{"question_id": 2, "turns": ["b"'], "auto", r"line 2 \(record 1\): malformed JSON"),
    (['{"question_id": 1, "turns": ["a"]}', '', '{"question_id": 2, "turns": []}'], "mt_bench", "line 3: 'turns'"),
    (['{"question_id": true, "turns": ["a"]}'], "mt_bench", "line 1: 'question_id'"),
    (['{"question_id": 1, "turns": ["a"]}', '{"question_id": 1, "turns": ["b"]}'], "mt_bench", "duplicate ids"),
    (['{"conversations": [{"from": "alien", "value": "x"}]}'], "sharegpt", "line 1: unknown_role"),
    (['{"text": "no known key"}'], "auto", "line 1: cannot tell the format"),
    (['{"id": 1, "category": 5, "prompt": "x"}'], "jsonl", "line 1: 'category'"),
])
def test_malformed_lines_are_named(tmp_path, lines, fmt, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        prompt_sets.load_prompt_set(path, fmt)


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"conversations": []},\n {"conversations": [}\n]')
    with pytest.raises(DataError, match="line 3"):
        prompt_sets.load_prompt_set(path)


# ---------------------------------------------------------------- summary
def turn(base_tokens, base_time, medusa_tokens, medusa_time, accepts, text="x", medusa_text=None):
    return {"prompt": "p",
            "base": {"text": text, "new_tokens": base_tokens, "wall_time": base_time},
            "medusa": {"text": text if medusa_text is None else medusa_text, "new_tokens": medusa_tokens,
                       "wall_time": medusa_time, "steps": len(accepts), "accept_lengths": accepts,
                       "times": {s: 0.1 * (i + 1) for i, s in enumerate(results.STAGES)}}}


def test_summary_by_hand():
    samples = [{"id": 1, "category": "math", "turns": [turn(10, 2.0, 10, 1.0, [3, 3, 4])]},
               {"id": 2, "category": "code", "turns": [turn(6, 1.0, 6, 1.0, [2, 2, 1, 1]),
                                                       turn(4, 1.0, 4, 0.5, [4], medusa_text="y")]}]
    s = results.summarize(samples, greedy=True)
    assert s["base"]["tokens_per_second"] == pytest.approx(20 / 4.0)
    assert s["medusa"]["tokens_per_second"] == pytest.approx(20 / 2.5)
    assert s["speedup"] == pytest.approx((20 / 2.5) / (20 / 4.0))
    assert s["medusa"]["compression_ratio"] == pytest.approx(20 / 8)
    assert s["medusa"]["wall_time_init"] == pytest.approx(0.1 * 3 / 2)   # 3 turns over 2 samples
    assert s["identical_outputs"] == 1   # sample 2 differs in its second turn
    assert s["per_category"]["math"]["speedup"] == pytest.approx(2.0)
    assert s["per_category"]["code"]["compression_ratio"] == pytest.approx(10 / 5)
    assert "identical_outputs" not in results.summarize(samples, greedy=False)


def test_stages_are_the_decoders():
    from medusa.decoding.loop import STAT_NAMES

    assert results.STAGES == STAT_NAMES


def test_summary_of_one_side():
    samples = [{"id": 1, "category": "math", "turns": [{"prompt": "p", "base": turn(5, 1.0, 0, 0, [])["base"]}]}]
    s = results.summarize(samples, greedy=True)
    assert s["base"]["tokens_per_second"] == 5.0 and "medusa" not in s and "speedup" not in s


# ---------------------------------------------------------------- runs on a tiny model
@pytest.fixture(scope="module")
def tiny_run(tiny_pkl, tmp_path_factory):
    """(make_config, setup): a tiny Llama with random 4-head Medusa heads saved for the CLI."""
    from medusa.heads.families import HeadConfig, build_heads
    from medusa.heads.io import save_heads
    from medusa.model.weights import load_model
    from medusa.runtime.backend import jt

    pkl = tiny_pkl("llama")
    cfg = load_model(pkl).config
    jt.set_global_seed(0)
    heads = build_heads(HeadConfig(family="medusa", num_heads=4, num_layers=1, hidden_size=cfg.hidden_size,
                                   vocab_size=cfg.vocab_size, share_lm_head=True))
    heads_path = save_heads(heads, tmp_path_factory.mktemp("heads") / "heads.jtr")
    out_dir = tmp_path_factory.mktemp("results")

    def make_config(name, **kw):
        """A bench.Bench from flat settings, as the command line would give them."""
        flat = dict(jittor_base_weights=str(pkl), medusa_weights=str(heads_path), num_samples=3,
                    max_new_tokens=12, warmup_tokens=4, output=str(out_dir / f"{name}.json"), plot=False)
        flat.update(kw)
        parts = [cls(**{f.name: flat[f.name] for f in dataclasses.fields(cls) if f.name in flat})
                 for cls in (ModelArgs, GenerationSettings, bench.BenchArgs)]
        return bench.Bench(*parts)

    setup = bench.load_setup(make_config("setup"))
    return make_config, setup


def test_greedy_medusa_matches_base_and_summary_recomputes(tiny_run):
    make_config, setup = tiny_run
    cfg = make_config("greedy", plot=True)
    bench.run(cfg, setup, progress=False)
    out = bench.Path(cfg.args.output)
    saved = json.loads(out.read_text())
    assert saved["summary"]["identical_outputs"] == len(saved["samples"]) == 3
    assert saved["summary"] == results.summarize(saved["samples"], saved["config"]["greedy"])
    for t in (t for s in saved["samples"] for t in s["turns"]):
        assert t["base"]["text"] == t["medusa"]["text"]
        assert sum(t["medusa"]["accept_lengths"]) <= t["medusa"]["new_tokens"]
        assert set(t["medusa"]["times"]) == set(results.STAGES)
    assert saved["config"]["tree"] == load_choices("8_node", 4)
    assert {"jittor", "device", "cpu", "git_commit", "date"} <= set(saved["environment"])
    assert out.with_suffix(".png").stat().st_size > 0
    assert saved["summary"]["load_average_1m"] >= 0


def test_first_divergence_names_the_position_and_the_logit_gap(tiny_run):
    """Where two greedy replies first differ, with the plain model's logits there; a reply that is
    only longer has no tokens to compare; equal replies have no divergence."""
    from medusa.decoding.core import forced_logits, generate

    _, setup = tiny_run
    prompt = [5, 9, 13, 22]
    base = generate(setup.model, prompt, 10).output_ids
    assert bench.first_divergence(setup.model, prompt, base, base) is None
    other = list(base)
    other[3] = (base[3] + 1) % setup.model.config.vocab_size
    d = bench.first_divergence(setup.model, prompt, base, other)
    row = forced_logits(setup.model, prompt, base[:3])[-1]
    assert d["position"] == 3 and d["base_token"] == base[3] and d["medusa_token"] == other[3]
    assert d["logit_gap"] == pytest.approx(row[base[3]] - row[other[3]]) and d["logit_gap"] >= 0
    assert d["top2_margin"] == pytest.approx(float(np.diff(np.sort(row)[-2:])[0]))
    assert bench.first_divergence(setup.model, prompt, base, base[:6]) == {"position": 6, "top2_margin": pytest.approx(
        float(np.diff(np.sort(forced_logits(setup.model, prompt, base[:6])[-1])[-2:])[0]))}


def test_interrupted_run_resumes_without_duplicates(tiny_run, monkeypatch):
    make_config, setup = tiny_run
    cfg = make_config("resume", base_only=True)
    real = bench.run_sample
    calls = []

    def interrupt_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(bench, "run_sample", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        bench.run(cfg, setup, progress=False)
    out = bench.Path(cfg.args.output)
    assert len(json.loads(out.read_text())["samples"]) == 2   # finished samples survive
    monkeypatch.setattr(bench, "run_sample", real)
    from medusa.runtime.errors import (
        UsageError,  # one line and exit 2 at the command line, not a traceback
    )
    with pytest.raises(UsageError, match="max_new_tokens.*give another --output"):
        bench.run(make_config("resume", base_only=True, resume=True, max_new_tokens=5), setup, progress=False)
    run, _ = bench.run(make_config("resume", base_only=True, resume=True, num_samples=4), setup, progress=False)
    ids = [s["id"] for s in run["samples"]]
    assert len(ids) == len(set(ids)) == 4
    assert run["summary"]["num_samples"] == 4 and len(run["resumed"]) == 1


def test_compare_tables(tmp_path, capsys):
    from medusa.bench import compare
    from medusa.runtime.errors import UsageError

    env = {"device": "cpu", "load_average": [1.5, 1.0, 1.0], "git_commit": "0123456789abcdef", "git_dirty": False}
    config = {"greedy": True, "max_new_token": 8, "medusa_choices": "8_node", "tree": load_choices("8_node"),
              "head_config": {"family": "rnn"}, "sampling_mode": "typical", "temperature": 0.0}
    full = [{"id": 1, "category": "math", "turns": [turn(10, 2.0, 10, 1.0, [3, 3, 4])]}]
    base_only = [{"id": 1, "category": "math", "turns": [{"prompt": "p", "base": full[0]["turns"][0]["base"]}]}]
    paths = []
    for name, samples in (("full", full), ("base_only", base_only)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"config": config, "environment": env, "samples": samples,
                                         "summary": {"stale": True}}))
    compare_cmd.main([str(p) for p in paths])
    text = capsys.readouterr().out
    assert "speedup" in text and "2.00x" in text and "rnn" in text
    compare_cmd.main([str(p) for p in paths] + ["--markdown"])
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 4 and rows[2].startswith("| full |") and "| 2.00x |" in rows[2]
    assert "| - |" in rows[3]   # no Medusa numbers in a base-only run
    png = tmp_path / "chart.png"
    compare_cmd.main([str(p) for p in paths] + ["--png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(UsageError, match="exists"):
        compare_cmd.main([str(p) for p in paths] + ["--png", str(png)])
    with pytest.raises(UsageError, match="no run has Medusa numbers"):
        compare.plot_runs([compare.load_run(paths[1])], tmp_path / "none.png")


def test_multi_turn_sampling_run(tiny_run, tmp_path):
    """MT-bench: every turn is decoded, with the side's own earlier answers in its prompt."""
    make_config, setup = tiny_run
    data = write_jsonl(tmp_path / "question.jsonl", MT_BENCH)
    cfg = make_config("mt_bench", data_path=str(data), temperature=0.7, max_new_tokens=6)
    run, _ = bench.run(cfg, setup, progress=False)
    first = run["samples"][0]["turns"]
    assert [t["prompt"] for t in first] == MT_BENCH[0]["turns"]
    for side in results.SIDES:
        assert first[1][side]["prompt_tokens"] > first[0][side]["prompt_tokens"] + first[0][side]["new_tokens"]
    assert run["summary"]["num_turns"] == 3 and "identical_outputs" not in run["summary"]


def test_default_output_never_replaces_an_earlier_run(tiny_run, tmp_path, monkeypatch):
    make_config, setup = tiny_run
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    first = bench.default_output(make_config("x"), setup)
    first.write_text("{}")
    second = bench.default_output(make_config("x"), setup)
    assert second != first and second.name.endswith("-2.json")


def test_results_written_before_a_setting_resume_as_its_old_behaviour(tmp_path):
    """A results file from before --draft_vocab existed ran over the whole vocabulary: it resumes
    with --draft_vocab none and refuses another value."""
    from medusa.runtime.errors import UsageError

    path = tmp_path / "old.json"
    path.write_text(json.dumps({"config": {"greedy": True}, "environment": {}, "samples": [], "summary": {}}))
    assert results.start_results(path, {"greedy": True, "draft_vocab": "none"}, resume=True)["config"]["draft_vocab"] == "none"
    with pytest.raises(UsageError, match="draft_vocab 'none' -> 'auto'"):
        results.start_results(path, {"greedy": True, "draft_vocab": "auto"}, resume=True)


def test_warm_up_covers_a_prompt_past_the_short_prompt_kernels(tiny_run, monkeypatch):
    """The untimed warm-up decodes the first prompt and one longer than LONG_PROMPT tokens on
    each side (a first 68-token prompt once spent 15 s compiling inside a timed GPU sample)."""
    make_config, setup = tiny_run
    cfg = make_config("warm")
    seen = []
    monkeypatch.setattr(bench, "decode_turn", lambda side, s, g, ids, n, seed: seen.append((side, len(ids), n)))
    prompt = bench.spread_over_categories(bench.load_prompt_set(cfg.args.data_path, cfg.args.data_format), 1)[0]
    bench.warm_up(setup, cfg, prompt)
    first = seen[0][1]
    assert first <= bench.LONG_PROMPT
    assert seen == [(side, length, 4) for length in (first, 2 * bench.LONG_PROMPT) for side in cfg.args.sides]


def test_results_record_whether_greedy_is_exact(tiny_run):
    make_config, setup = tiny_run
    cfg = make_config("exact_recorded", num_samples=1, max_new_tokens=2)
    bench.run(cfg, setup, progress=False)
    assert json.loads(bench.Path(cfg.args.output).read_text())["config"]["exact"] == "off"   # (the CPU: no fused kernels)
