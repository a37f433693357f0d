"""`python -m medusa generate`: plain decoding from the command line, checked against transformers."""
import json
import os
import subprocess
import sys

import pytest
import support
import torch
from support import ROOT

from medusa.cli import generate

PROMPT = "the cat sat on the mat"


def cli(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    generate.main(list(argv))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def transformers_greedy(folder, prompt_ids, n):
    """transformers' greedy generate as a user would call it (stops at the model's EOS)."""
    ref = support.load_reference(folder)
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("family", support.FAMILIES)
def test_json_greedy_on_a_transformers_folder_equals_transformers(capsys, tiny_hf, family):
    folder = tiny_hf(family)
    record = cli(capsys, "--base_model_path", str(folder), "--prompt", PROMPT, "--greedy",
                 "--max_new_token", "32", "--json", "--dtype", "float32")
    tok = support.make_tokenizer()
    assert record["prompt_ids"] == tok(PROMPT)["input_ids"]
    assert record["output_ids"] == transformers_greedy(folder, record["prompt_ids"], 32)
    assert record["text"] == tok.decode(record["output_ids"], skip_special_tokens=True)


def test_converted_weights_and_chat_template(capsys, tiny_hf, tiny_pkl):
    record = cli(capsys, "--jittor_base_weights", str(tiny_pkl("qwen2")), "--prompt", PROMPT, "--chat",
                 "--max_new_token", "12", "--json")
    tok = support.make_tokenizer()
    expected_prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False)
    assert record["prompt_ids"] == list(expected_prompt)
    assert record["output_ids"] == transformers_greedy(tiny_hf("qwen2"), record["prompt_ids"], 12)


def test_sampling_is_reproducible_with_a_seed(capsys, tiny_pkl):
    args = ["--jittor_base_weights", str(tiny_pkl("llama")), "--prompt", PROMPT, "--temperature", "1.5",
            "--top_p", "0.9", "--max_new_token", "16", "--json"]
    first = cli(capsys, *args, "--seed", "1")["output_ids"]
    assert cli(capsys, *args, "--seed", "1")["output_ids"] == first
    assert any(cli(capsys, *args, "--seed", str(s))["output_ids"] != first for s in (2, 3, 4))


def test_module_entry_point_runs_as_a_user_would(tiny_hf):
    """One real `python -m medusa generate` subprocess (the other tests call main() directly)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "medusa", "generate", "--base_model_path", str(tiny_hf("qwen3")),
                          "--prompt", PROMPT, "--max_new_token", "8", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["output_ids"] == transformers_greedy(tiny_hf("qwen3"), record["prompt_ids"], 8)


def test_missing_tokenizer_is_a_clear_error(tmp_path, tiny_pkl):
    import shutil

    lonely = tmp_path / "model.pkl"
    shutil.copy(tiny_pkl("llama"), lonely)
    shutil.copy(tiny_pkl("llama").parent / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json beside it; pass --base_model_path"):
        generate.main(["--jittor_base_weights", str(lonely), "--prompt", "x", "--json"])
