"""Checks of the data the repository ships, not of code: the package's prompt sets, the shipped
self-instruct seeds, and the committed self-distillation rounds (data/selfdistill/), each whole,
without reused ids and apart from the bench and tuning prompts.

Marked `committed_data` (pyproject.toml): `pytest -m "not committed_data"` runs the unit tests alone.
"""
import gzip
import json
from collections import Counter

import pytest
from support import ROOT

from medusa.data import prompt_gen
from medusa.data.samples import load_prompts
from medusa.runtime.files import PACKAGE_DIR
from medusa.training import self_instruct as si

pytestmark = pytest.mark.committed_data
PROMPTS_DIR = PACKAGE_DIR / "prompts"


def test_project_prompt_sets():
    train = load_prompts(PROMPTS_DIR / "smollm2_prompts.jsonl")
    bench = load_prompts(PROMPTS_DIR / "bench_prompts.jsonl")
    assert 200 <= len(train) <= 300 and len(bench) == 20
    categories = set(p["category"] for p in train)   # the sets' own labels, the same in both
    assert len(categories) == 10
    assert Counter(p["category"] for p in bench) == {c: 2 for c in categories}
    assert min(Counter(p["category"] for p in train).values()) >= 15
    norm = lambda p: " ".join(p["prompt"].lower().split())
    assert len({norm(p) for p in train}) == len(train)
    assert not {norm(p) for p in train} & {norm(p) for p in bench}
    assert not {p["id"] for p in train} & {p["id"] for p in bench}


def test_the_committed_prompts_are_what_the_generator_makes():
    committed = load_prompts(ROOT / "data" / "selfdistill" / "prompts_12k.jsonl.gz")
    assert committed[:500] == prompt_gen.generate(500, seed=0)   # a prefix: generation is sequential
    assert len(committed) == 12000


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
