"""Every entry point's flags, the way a user meets them: bad input is one line on stderr and exit
status 2, found before the model loads; temperature 0 is greedy everywhere; the entry points agree.

The cases are ones found by trying the commands by hand (each was a crash, a silent wrong answer or a late
error before). Subprocess tests run the real command line; the rest call main() in-process.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from support import ROOT

from medusa import cli
from medusa.app import loading
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.cli import bench as bench_cmd
from medusa.cli import distill as distill_cmd
from medusa.cli import generate
from medusa.decoding import core
from medusa.runtime.errors import UsageError
from medusa.training import distill

PROMPT = "the cat sat on the mat"


def command(*argv, module="medusa.cli.generate"):
    """Run `python -m module argv` (or a script path) as a user would -> CompletedProcess."""
    head = [sys.executable, *(["-m", module] if not module.endswith(".py") else [str(ROOT / module)])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(head + [str(a) for a in argv], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def assert_one_line_error(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), out.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


@pytest.fixture(scope="module")
def heads_file(tiny_pkl, tmp_path_factory):
    """Random 4-head Medusa heads for the tiny models (H 64, V 320), saved with their config."""
    from medusa.heads.families import HeadConfig, build_heads
    from medusa.heads.io import save_heads
    from medusa.runtime.backend import jt

    jt.set_global_seed(0)
    heads = build_heads(HeadConfig(family="medusa", num_heads=4, num_layers=1, hidden_size=64, vocab_size=320))
    return save_heads(heads, tmp_path_factory.mktemp("cli-heads") / "heads.jtr")


@pytest.fixture(scope="module")
def unloadable(tiny_pkl, tmp_path_factory):
    """A converted tiny model whose weights file is garbage: any error that mentions it came
    from loading the model, so an error that does not was found before the load."""
    folder = tmp_path_factory.mktemp("unloadable")
    for f in tiny_pkl("llama").parent.iterdir():
        if f.name != "model.pkl":
            shutil.copy(f, folder / f.name)
    (folder / "model.pkl").write_bytes(b"not a pickle at all")
    return folder / "model.pkl"


# ---------------------------------------------------------------- one-line errors, exit 2
@pytest.mark.parametrize("argv, fragments", [
    (["--max_new_tokens", "-5"], ["--max_new_tokens must be >= 1, got -5"]),
    (["--prompt", ""], ["--prompt is empty"]),
    (["--top_p", "0", "--temperature", "0.7"], ["--top_p must be in (0, 1]"]),
    (["--temperature", "-1"], ["--temperature must be >= 0"]),
    (["--greedy", "--temperature", "0.7"], ["exclude each other"]),
    (["--medusa_choices", "8_nodes"], ["unknown tree '8_nodes'"]),
    (["--vocab_check", "-1"], ["--vocab_check must be >= 0 (0 = off), got -1"]),
])
def test_bad_flags_are_one_line_before_anything_loads(unloadable, argv, fragments):
    base = ["--jittor_base_weights", unloadable, "--prompt", PROMPT]
    out = command(*base, *argv)   # later flags win: --prompt "" overrides
    assert_one_line_error(out, *fragments)


def test_tree_problems_are_found_before_the_model_loads(unloadable, heads_file, tmp_path):
    bad_json = tmp_path / "tree.json"
    bad_json.write_text("[[0], [0, 0]")
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps([[0] * d for d in range(1, 6)]))   # depth 5, the heads are 4
    base = ["--jittor_base_weights", unloadable, "--medusa_weights", heads_file, "--prompt", PROMPT]
    assert_one_line_error(command(*base, "--medusa_choices", bad_json), "not valid JSON")
    assert_one_line_error(command(*base, "--medusa_choices", deep), "tree depth 5 exceeds", "4")
    assert_one_line_error(command(*base, "--medusa_choices", tmp_path / "missing.json"), "unknown tree")


def test_heads_for_another_vocabulary_are_refused_by_generate_and_bench(unloadable, tmp_path):
    from medusa.heads.families import HeadConfig, build_heads
    from medusa.heads.io import save_heads

    wrong = save_heads(build_heads(HeadConfig(num_heads=4, hidden_size=64, vocab_size=1000, share_lm_head=False)),
                       tmp_path / "wrong.jtr")
    base = ["--jittor_base_weights", unloadable, "--medusa_weights", wrong]
    assert_one_line_error(command(*base, "--prompt", PROMPT), "vocabulary 1000", "320", str(wrong))
    assert_one_line_error(command(*base, "--num_samples", "1", "--output", tmp_path / "r.json",
                                  module="test_medusa_benchmark.py"), "vocabulary 1000", "320")


def test_prompt_beyond_the_context_names_both_numbers(tiny_pkl, heads_file):
    long_prompt = " ".join(["hello there"] * 400)        # ~800 tokens; the tiny models hold 512
    for extra in ([], ["--medusa_weights", heads_file]):
        out = command("--jittor_base_weights", tiny_pkl("llama"), "--prompt", long_prompt,
                      "--max_new_tokens", "8", *extra)
        last = assert_one_line_error(out, "exceeds the model's context of 512 positions")
        assert "new tokens" in last and "8" in last


def test_debug_shows_the_traceback(unloadable):
    out = command("--jittor_base_weights", unloadable, "--prompt", PROMPT, "--top_p", "2", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "UsageError" in out.stderr


def test_old_flag_spelling_still_works_and_warns(tiny_pkl):
    out = command("--jittor_base_weights", tiny_pkl("llama"), "--prompt", PROMPT, "--max_new_token", "3", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--max_new_token is deprecated, use --max_new_tokens" in out.stderr
    assert len(json.loads(out.stdout.strip().splitlines()[-1])["output_ids"]) == 3


# ---------------------------------------------------------------- the core's edge cases
def test_core_decides_the_edge_cases_once(tiny_pkl, heads_file):
    from medusa.decoding.loop import medusa_generate
    from medusa.heads.io import load_heads
    from medusa.model.weights import load_model

    model, heads = load_model(tiny_pkl("qwen2"), "float32"), load_heads(heads_file)
    for decode in (lambda ids, n: core.generate(model, ids, n), lambda ids, n: medusa_generate(model, heads, ids, n),
                   lambda ids, n: core.greedy_batch(model, [ids], n, set())):
        with pytest.raises(core.GenerationError, match="prompt is empty"):
            decode([], 4)
        with pytest.raises(core.GenerationError, match="max_new_tokens is 0"):
            decode([7, 8], 0)
        with pytest.raises(core.GenerationError, match="510 tokens \\+ 3 new tokens = 513 exceeds"):
            decode([7] * 510, 3)
    assert len(core.generate(model, [7] * 500, 12).output_ids) == 12      # exactly at the limit: fine


def test_rope_tables_follow_the_config_not_a_cap():
    """A Llama-3 config (131072 positions) is no longer cut at 8192: the tables grow on demand."""
    from medusa.model.config import ModelConfig, rope_inv_freq
    from medusa.model.transformer import Transformer

    cfg = ModelConfig(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=131072)
    core.check_request(cfg, 9000, 4000)
    with pytest.raises(core.GenerationError, match="131072"):
        core.check_request(cfg, 131000, 73)
    model = Transformer(cfg)
    assert model.rope_rows(12000) >= 12000
    want = np.cos(11999 * np.asarray(rope_inv_freq(cfg)))
    assert np.allclose(model._cos.numpy()[11999, :4], want, atol=1e-4)


# ---------------------------------------------------------------- one meaning per flag
def test_settings_parse_the_same_everywhere():
    parsers = {"generate": lambda a: cli.parse(a + ["--prompt", "x"], (ModelArgs, GenerationSettings, generate.GenerateArgs))[1],
               "bench": lambda a: bench_cmd.parse_args(a).generation,
               "distill": lambda a: cli.parse(a, (ModelArgs, GenerationSettings, distill.DistillArgs))[1]}
    for name, parse in parsers.items():
        default = parse([])
        assert (default.sampling_mode, default.max_new_tokens, default.greedy) == ("sample", 128, True), name
        assert parse(["--temperature", "0"]).greedy, name             # temperature 0 means greedy
        assert parse(["--temperature", "0"]).sampling().kind == "greedy", name
        with pytest.raises(UsageError):
            parse(["--top_p", "0"])


def test_temperature_zero_is_greedy_on_both_bench_sides(tiny_pkl, heads_file, tmp_path):
    out = tmp_path / "t0.json"
    bench_cmd.main(["--jittor_base_weights", str(tiny_pkl("llama")), "--medusa_weights", str(heads_file),
                "--temperature", "0", "--num_samples", "2", "--max_new_tokens", "10", "--warmup_tokens", "0",
                "--output", str(out), "--no_plot"])
    saved = json.loads(out.read_text())
    assert saved["config"]["greedy"] is True and saved["summary"]["identical_outputs"] == 2


def test_every_entry_point_gives_the_same_greedy_ids(tiny_pkl, tmp_path, capsys):
    """generate, the benchmark's base side and distillation: the same prompt, chat template and
    length give the same tokens (distill writes text without the EOS, so text is compared)."""
    pkl, prompt, n = str(tiny_pkl("qwen2")), "what is the capital of france", 14
    generate.main(["--jittor_base_weights", pkl, "--prompt", prompt, "--chat", "--max_new_tokens", str(n), "--json"])
    gen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": 1, "category": "geo", "prompt": prompt}) + "\n")
    bench_cmd.main(["--jittor_base_weights", pkl, "--base_only", "--data_path", str(prompts), "--num_samples", "1",
                "--max_new_tokens", str(n), "--warmup_tokens", "0", "--output", str(tmp_path / "b.json"), "--no_plot"])
    base = json.loads((tmp_path / "b.json").read_text())["samples"][0]["turns"][0]["base"]

    distill_cmd.main(["--base_model_path", pkl, "--prompts", str(prompts), "--output", str(tmp_path / "d.jsonl"),
                  "--max_new_tokens", str(n)])
    reply = json.loads((tmp_path / "d.jsonl").read_text())["conversations"][1]["value"]

    assert base["output_ids"] == gen["output_ids"]
    assert base["text"] == gen["text"] == reply


def test_auto_tree_is_the_tuned_file_beside_the_heads_else_the_fallback(tiny_pkl, heads_file, tmp_path):
    from medusa.decoding.tree import AUTO_FALLBACK, load_choices, tuned_tree_path

    heads = tmp_path / heads_file.name
    shutil.copy(heads_file, heads)
    shutil.copy(heads_file.with_name(heads_file.stem + "_config.json"), tmp_path)
    margs = ModelArgs(jittor_base_weights=str(tiny_pkl("llama")), medusa_weights=str(heads), device="cpu")
    plan = loading.plan(margs, GenerationSettings(), heads="required")
    assert plan.tree_spec == AUTO_FALLBACK["cpu"] and plan.choices == load_choices(AUTO_FALLBACK["cpu"], 4)
    tuned = tuned_tree_path(heads, "cpu")
    tuned.write_text("[[0], [1], [0, 0]]")
    plan = loading.plan(margs, GenerationSettings(), heads="required")
    assert plan.tree_spec == str(tuned) and plan.choices == [[0], [1], [0, 0]]
    assert plan.resolved()["tree_spec"] == str(tuned)
