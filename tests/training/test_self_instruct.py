"""Self-instruct prompts: what counts as a request, copies and near-copies, the shipped seeds kept
apart from the evaluation sets, a run that resumes and refuses other settings, and the committed
rounds whole and apart from each other."""
import json

import pytest

from medusa.cli import self_instruct as si_cmd
from medusa.runtime.errors import UsageError
from medusa.training import self_instruct as si


def test_clean_keeps_complete_one_line_requests():
    assert si.clean(" Write a poem about owls.\nRequest: more") == "Write a poem about owls."
    assert si.clean(" Write a poem about owls") is None                 # cut off: no end of line
    assert si.clean(" Hi there\n") is None                              # too short
    assert si.clean(" - a list item here\n") is None                    # not a sentence
    assert si.clean(" Say Request: again please\n") is None             # the frame leaking in
    assert si.clean("\n") is None


def test_near_duplicates_catch_copies_not_new_requests():
    d = si.NearDuplicates(0.6)
    d.add("Write a short poem about the first snow of winter.")
    assert d.close("write a short poem about the first snow of winter")            # case, punctuation
    assert d.close("Write a short poem about the first snow of the winter.")      # a near copy
    assert not d.close("Write a short story about a dog who learns to swim.")
    assert not d.close("What is 12 times 7?")


def run_args(tmp_path, **kw):
    argv = ["--output", str(tmp_path / "p.jsonl"), "--prompt_ids_output", str(tmp_path / "ids.jsonl"),
            "--batch_size", "4", "--max_new_tokens", "6", "--near", "1.0", "--shots", "1"]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    return si_cmd.parse_args(argv)


def test_run_writes_resumes_and_refuses_other_settings(tiny_pkl, tmp_path, monkeypatch):
    # a random tiny model rarely ends a line: take any non-empty completion as a request here
    monkeypatch.setattr(si, "clean", lambda c: " ".join(c.split()) or None)
    model = tiny_pkl("qwen2")
    first = si.run(run_args(tmp_path, num=5, model=model, device="cpu"))
    assert first["prompts"] == 5 and first["new"] == 5
    again = si.run(run_args(tmp_path, num=9, model=model, device="cpu"))      # continues: 4 more
    assert again["new"] == 4 and again["prompts"] == 9
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    ids = [json.loads(line) for line in (tmp_path / "ids.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == list(range(100000, 100009)) == [r["id"] for r in ids]
    rounds = [r["round"]["n"] for r in records]
    assert rounds == sorted(rounds) and rounds[-1] > rounds[4]           # the rerun drew new rounds
    assert len({r["prompt"] for r in records}) == 9
    assert {r["category"] for r in records} <= set(si.load_seeds(si.DEFAULT_SEEDS))
    assert all(r["prompt_ids"] for r in ids)
    with pytest.raises(UsageError, match="other settings"):
        si.run(run_args(tmp_path, num=12, seed=1, model=model, device="cpu"))


@pytest.mark.parametrize("argv, match", [
    (["--temperature", "0"], "temperature"),
    (["--near", "1.5"], "near"),
    (["--seeds", "/no/such.jsonl"], "no such file"),
    (["--model", "/no/such.gguf"], "no such file"),
])
def test_bad_flags_are_usage_errors(tmp_path, argv, match):
    with pytest.raises(UsageError, match=match):
        si_cmd.parse_args(["--output", str(tmp_path / "p.jsonl"), *argv])


