"""Benchmark prompt sets: our JSONL, MT-bench and ShareGPT files -> `BenchPrompt`s.

    prompts = load_prompt_set("question.jsonl")            # format detected from the first record
    prompts[0].turns                                      # the user messages, in order
    spread_over_categories(prompts, 10)                   # 10 of them, categories taking turns

Every format is read with plain `json` so that errors name the file and the line (JSONL) or
record (JSON array). Pure python: no Jittor, cheap to import.
"""
import dataclasses

from medusa.data.samples import DataError, SkipRecord, load_prompts, normalise_record, read_located
from medusa.runtime.files import PACKAGE_DIR

DEFAULT_PROMPTS = PACKAGE_DIR / "prompts" / "bench_prompts.jsonl"
DATA_FORMATS = ("auto", "jsonl", "mt_bench", "sharegpt")


@dataclasses.dataclass
class BenchPrompt:
    id: object            # int or str, unique within a set
    category: str
    turns: list           # user messages, in order
    system: str = ""      # optional system message


def load_prompt_set(path, data_format="auto"):
    """BenchPrompts of a file: our JSONL ({"id", "category", "prompt"}), MT-bench
    ({"question_id", "category", "turns"}) or ShareGPT (JSON array or JSONL of {"conversations"}).
    Raises DataError naming the file and line (JSONL) or record (JSON array) of a bad entry."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    records = read_located(path)
    if not records:
        raise DataError(f"{path}: no records")
    if data_format == "auto":
        data_format = detect_format(path, *records[0])
    if data_format == "jsonl":
        return [BenchPrompt(p["id"], p["category"], [p["prompt"]]) for p in load_prompts(path)]
    parse = _mt_bench_prompt if data_format == "mt_bench" else _sharegpt_prompt
    prompts = [p for where, rec in records if (p := parse(f"{path}: {where}", rec)) is not None]
    if not prompts:
        raise DataError(f"{path}: no usable {data_format} records")
    ids = [p.id for p in prompts]
    if len(set(map(str, ids))) != len(ids):
        raise DataError(f"{path}: duplicate ids; every record needs its own id")
    return prompts


def spread_over_categories(prompts, n):
    """n prompts taken round-robin over the categories (in order of first appearance), each
    category's in file order: the first 10 of a file sorted by category would be 5 categories
    of 2 (our set) or 10 MT-bench writing questions; this gives each category its share."""
    queues = {}
    for p in prompts:
        queues.setdefault(p.category, []).append(p)
    picked, depth = [], 0
    while len(picked) < min(n, len(prompts)):
        picked += [q[depth] for q in queues.values() if depth < len(q)][:n - len(picked)]
        depth += 1
    return picked


def detect_format(path, where, record):
    if isinstance(record, dict):
        if "turns" in record:
            return "mt_bench"
        if "conversations" in record or "messages" in record:
            return "sharegpt"
        if "prompt" in record:
            return "jsonl"
    raise DataError(f"{path}: {where}: cannot tell the format (expected a 'turns', 'conversations', "
                    "'messages' or 'prompt' key); pass --data_format")


def _mt_bench_prompt(where, rec):
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object")
    qid, turns = rec.get("question_id"), rec.get("turns")
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise DataError(f"{where}: 'question_id' must be an integer or string")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise DataError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
    category = rec.get("category", "mt_bench")
    if not isinstance(category, str):
        raise DataError(f"{where}: 'category' must be a string")
    return BenchPrompt(qid, category, list(turns))


# An empty or one-sided conversation is common in ShareGPT dumps: skipped, not an error.
SHAREGPT_SKIPPED = ("empty_conversation", "no_assistant_turn")


def _sharegpt_prompt(where, rec):
    try:
        messages = normalise_record(rec)
    except SkipRecord as err:
        if err.reason in SHAREGPT_SKIPPED:
            return None
        raise DataError(f"{where}: {err}") from err
    turns = [m["content"] for m in messages if m["role"] == "user"]
    if not turns:
        return None
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    return BenchPrompt(rec.get("id", where), str(rec.get("category", "sharegpt")), turns, system)
