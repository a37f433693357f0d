"""The seeded prompt generator for self-distillation at scale (medusa/data/prompt_gen.py)."""
from collections import Counter

from support import ROOT

from medusa.data import prompt_gen
from medusa.data.samples import load_prompts


def test_prompts_are_distinct_balanced_seeded_and_not_the_benchmarks():
    a = prompt_gen.generate(2000, seed=3)
    assert a == prompt_gen.generate(2000, seed=3) and a != prompt_gen.generate(2000, seed=4)
    texts = [r["prompt"] for r in a]
    assert len(set(texts)) == len(texts) == 2000
    assert set(Counter(r["category"] for r in a).values()) == {200}       # 10 categories, equal shares
    bench = {p["prompt"] for p in load_prompts(ROOT / "medusa" / "prompts" / "bench_prompts.jsonl")}
    assert not bench & set(texts)


