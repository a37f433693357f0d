"""Self-instruct prompts: what counts as a request, copies and near-copies, the shipped seeds kept
apart from the evaluation sets, a run that resumes and refuses other settings, and the committed
rounds whole and apart from each other."""
import gzip
import json
from pathlib import Path

import pytest

from medusa.cli import self_instruct as si_cmd
from medusa.data.samples import load_prompts
from medusa.runtime.errors import UsageError
from medusa.training import self_instruct as si

ROOT = Path(__file__).parent.parent


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


def evaluation_prompts():
    """The bench and tuning prompts (self_instruct's default --exclude) in a NearDuplicates(0.6)."""
    held_out = si.NearDuplicates(0.6)
    for path in si.DEFAULT_EXCLUDE:
        for p in load_prompts(path):
            held_out.add(p["prompt"])
    return held_out


def test_shipped_seeds_are_balanced_and_apart_from_evaluation_prompts():
    seeds = si.load_seeds(si.DEFAULT_SEEDS)
    assert len(seeds) == 11 and all(len(v) == 12 for v in seeds.values())
    held_out = evaluation_prompts()
    assert not [s for v in seeds.values() for s in v if held_out.close(s)]
    text = si.frame(["A?", "B."])
    assert text.endswith("Request: A?\nRequest: B.\nRequest:")


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


def _ids(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["id"] for line in f]


def test_committed_rounds_are_whole_distinct_and_apart_from_evaluation_and_earlier_rounds():
    """Every committed self-instruct round (data/selfdistill/prompts_si_*): its prompts, their ids
    file (same order) and the greedy replies (one each) name the same prompts; no id is reused
    across the prompt sets; no prompt is a near-copy of a bench or tuning prompt, or of a prompt
    in an earlier round (each round was made with --exclude of the rounds before it)."""
    folder = ROOT / "data" / "selfdistill"
    rounds = sorted(((load_prompts(path), path) for path in folder.glob("prompts_si_*.jsonl.gz")),
                    key=lambda r: r[0][0]["id"])                      # in the order they were made
    assert len(rounds) >= 2
    held_out = evaluation_prompts()
    seen_ids = set(_ids(folder / "prompts_12k.jsonl.gz"))
    for records, path in rounds:
        name = path.name[len("prompts_"):-len(".jsonl.gz")]           # si_12k, si_18k_s1, ...
        prompts, ids = [p["prompt"] for p in records], [p["id"] for p in records]
        assert ids == _ids(folder / f"prompt_ids_{name}.jsonl.gz")
        assert sorted(ids) == sorted(_ids(folder / f"smollm2_{name}_greedy_ids.jsonl.gz"))   # decoded by length
        assert len(set(prompts)) == len(prompts) and not seen_ids & set(ids)
        assert not [p for p in prompts if held_out.close(p)], path.name
        seen_ids |= set(ids)
        for p in prompts:
            held_out.add(p)
