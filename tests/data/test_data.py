"""Tests of medusa/data/samples.py with a real (tiny, trained-in-test) fast tokenizer, fully offline."""
import json
from collections import Counter

import numpy as np
import pytest
from support import CHATML, make_tokenizer

from medusa.data import samples as data
from medusa.runtime.files import PACKAGE_DIR

PROMPTS_DIR = PACKAGE_DIR / "prompts"

CONV = [("system", "you are kind"), ("user", "hello there"), ("assistant", "the cat sat"),
        ("user", "how are you"), ("assistant", "on the mat")]
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def _tokenizer(chat_template):
    return make_tokenizer(chat_template, vocab_size=400, corpus=[
        "hello there how are you", "the cat sat on the mat", "user assistant system you are kind"])


@pytest.fixture(scope="module")
def tok():
    return _tokenizer(CHATML)


@pytest.fixture(scope="module")
def vicuna_tok():
    return _tokenizer(None)


def sharegpt(conv):
    return {"id": "x", "conversations": [{"from": SHAREGPT_ROLE[r], "value": c} for r, c in conv]}


def messages(conv):
    return {"messages": [{"role": r, "content": c} for r, c in conv]}


def write_json(path, records):
    path.write_text(json.dumps(records, indent=1))
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def masked_runs(tok, sample):
    """Decoded text of each contiguous run of loss-mask ones."""
    runs, cur = [], []
    for i, m in zip(sample.input_ids, sample.loss_mask):
        if m:
            cur.append(int(i))
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


# ---------------------------------------------------------------- formats and masks

def test_both_formats_parse_the_same(tok, tmp_path):
    a = write_json(tmp_path / "a.json", [sharegpt(CONV), sharegpt(CONV[1:3])])
    b = write_jsonl(tmp_path / "b.jsonl", [messages(CONV), messages(CONV[1:3])])
    assert data.normalise_record(sharegpt(CONV)) == data.normalise_record(messages(CONV))
    sa, _ = data.load_samples(a, tok, 512)
    sb, _ = data.load_samples(b, tok, 512)
    assert len(sa) == len(sb) == 2
    for x, y in zip(sa, sb):
        assert x.input_ids.dtype == np.int32 and x.loss_mask.dtype == np.int32
        np.testing.assert_array_equal(x.input_ids, y.input_ids)
        np.testing.assert_array_equal(x.loss_mask, y.loss_mask)


def test_loss_mask_is_assistant_content_plus_end_token(tok):
    msgs = data.normalise_record(messages(CONV))
    s = data.encode_messages(msgs, tok, 512)
    assert masked_runs(tok, s) == ["the cat sat<|im_end|>", "on the mat<|im_end|>"]
    # the token before each run is the end of the role header, never masked
    text = tok.decode(s.input_ids[:np.argmax(s.loss_mask)], skip_special_tokens=False)
    assert text.endswith("<|im_start|>assistant\n")
    # and the ids are exactly those of the rendered conversation
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert s.input_ids.tolist() == tok(full, add_special_tokens=False)["input_ids"]


def test_empty_assistant_reply_trains_only_the_end_token(tok):
    s = data.encode_messages([{"role": "user", "content": "hello"},
                              {"role": "assistant", "content": ""}], tok, 512)
    assert masked_runs(tok, s) == ["<|im_end|>"]


def test_vicuna_template_is_explicit(vicuna_tok, tmp_path):
    path = write_jsonl(tmp_path / "v.jsonl", [sharegpt(CONV[1:])])
    with pytest.raises(ValueError, match="template='vicuna'"):
        data.load_samples(path, vicuna_tok, 512)
    (s,), _ = data.load_samples(path, vicuna_tok, 512, template="vicuna")
    text = vicuna_tok.decode(s.input_ids, skip_special_tokens=False)
    assert text == ("<s>" + data.VICUNA_SYSTEM + " USER: hello there ASSISTANT: the cat sat</s>"
                    "USER: how are you ASSISTANT: on the mat</s>")
    assert masked_runs(vicuna_tok, s) == [" the cat sat</s>", " on the mat</s>"]


def test_history_rewriting_template_is_skipped_not_mislabelled(tmp_path):
    tok = _tokenizer("{{ messages|length }}" + CHATML)   # every prefix renders differently
    path = write_jsonl(tmp_path / "a.jsonl", [messages(CONV)])
    with pytest.raises(data.DataError, match="template_not_prefix_stable"):
        data.load_samples(path, tok, 512)


# ---------------------------------------------------------------- truncation and bad data

def test_truncation(tok):
    msgs = data.normalise_record(messages(CONV))
    full = data.encode_messages(msgs, tok, 10_000)
    n = len(full) - 3
    cut = data.encode_messages(msgs, tok, n)
    assert len(cut) == n
    np.testing.assert_array_equal(cut.input_ids, full.input_ids[:n])
    np.testing.assert_array_equal(cut.loss_mask, full.loss_mask[:n])
    first_loss = int(np.argmax(full.loss_mask))
    with pytest.raises(data.SkipRecord) as e:
        data.encode_messages(msgs, tok, first_loss)   # cut right before the first reply
    assert e.value.reason == "no_loss_tokens"


@pytest.mark.parametrize("reader", ["plain", "datasets"])
def test_bad_records_are_skipped_and_counted(tok, tmp_path, reader):
    cache = tmp_path / "arrow" if reader == "datasets" else None
    good = sharegpt(CONV[1:3])
    records = [good, "a string", {"id": 1}, {"conversations": []},
               {"conversations": [{"from": "human"}]},
               {"messages": [{"role": "robot", "content": "hi"}]},
               {"messages": [{"role": "user", "content": "hi"}]},
               sharegpt(CONV), messages(CONV)]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    samples, report = data.load_samples(path, tok, 512, cache_dir=cache)
    assert len(samples) == report.kept == 3 and report.total == len(records)
    assert report.skipped == Counter(not_an_object=1, no_messages_field=1, empty_conversation=1,
                                     bad_message=1, unknown_role=1, no_assistant_turn=1)
    assert report.examples["unknown_role"].startswith("record 5:")
    # truncation that leaves no assistant token is a skip reason too (here: of every record)
    with pytest.raises(data.DataError, match="kept 0/9; skipped no_loss_tokens=3"):
        data.load_samples(path, tok, 6, cache_dir=cache)


def test_unusable_file_is_an_error_naming_it(tok, tmp_path):
    path = write_json(tmp_path / "bad.json", [{"id": 1}, {"conversations": []}])
    with pytest.raises(data.DataError, match=r"bad\.json.*no_messages_field=1.*record 0"):
        data.load_samples(path, tok, 512)


@pytest.mark.parametrize("reader", ["plain", "datasets"])
def test_malformed_json_names_file_and_line(tok, tmp_path, reader):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(messages(CONV)) + "\n\n" + '{"messages": [}\n')
    with pytest.raises(data.DataError, match=r"broken\.jsonl: line 3 \(record 1\)"):
        data.load_samples(path, tok, 512, cache_dir=tmp_path / "arrow" if reader == "datasets" else None)
    path = tmp_path / "broken.json"
    path.write_text('[\n {"messages": []},\n {"messages": [,]}\n]')
    with pytest.raises(data.DataError, match=r"broken\.json: line 3 column \d+: malformed JSON"):
        data.read_records(path)


def test_datasets_reader_equals_the_plain_one_and_caches_the_tokenized_records(tok, tmp_path):
    import gzip

    import datasets

    rng = np.random.default_rng(0)
    records = [sharegpt(CONV[1:3]) if i % 2 else messages(CONV) for i in range(30)]
    records += [{"conversations": [{"from": "human", "value": "hi"}]}]            # no assistant turn
    for r in records:
        r["id"] = int(rng.integers(1000))
    path = tmp_path / "chat.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    plain, plain_report = data.load_samples(path, tok, 512)
    cache = tmp_path / "arrow"
    arrow, report = data.load_samples(path, tok, 512, cache_dir=cache)
    assert report.kept == plain_report.kept == 30 and report.skipped == plain_report.skipped
    assert report.examples == plain_report.examples
    for a, b in zip(arrow, plain):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
    files = sorted(p.name for p in cache.rglob("*.arrow"))
    assert any(name.startswith("cache-") for name in files)        # the tokenized records, as Arrow
    again, _ = data.load_samples(path, tok, 512, cache_dir=cache)   # same file, tokenizer, settings: cached
    assert sorted(p.name for p in cache.rglob("*.arrow")) == files and len(again) == 30
    data.load_samples(path, tok, 40, cache_dir=cache)               # other settings: tokenized again
    assert len(list(cache.rglob("cache-*.arrow"))) > len([f for f in files if f.startswith("cache-")])
    parquet = tmp_path / "chat.parquet"
    datasets.Dataset.from_list([r for r in records if "messages" in r]).to_parquet(str(parquet))
    from_parquet, _ = data.load_samples(parquet, tok, 512, cache_dir=cache)
    np.testing.assert_array_equal(from_parquet[0].input_ids, [s for s, r in zip(plain, records) if "messages" in r][0].input_ids)


# ---------------------------------------------------------------- collate and head targets

def test_collate_pads_right_to_longest(tok):
    a = data.encode_messages(data.normalise_record(messages(CONV[1:3])), tok, 512)
    b = data.encode_messages(data.normalise_record(messages(CONV)), tok, 512)
    batch = data.collate([a, b], pad_id=0)
    T = max(len(a), len(b))
    for key in ("input_ids", "attention_mask", "loss_mask"):
        assert batch[key].shape == (2, T) and batch[key].dtype == np.int32
    assert batch["attention_mask"][0].tolist() == [1] * len(a) + [0] * (T - len(a))
    assert (batch["input_ids"][0, len(a):] == 0).all() and (batch["loss_mask"][0, len(a):] == 0).all()
    assert data.collate([a], pad_id=0)["input_ids"].shape == (1, len(a))   # never a fixed length


def test_head_targets_alignment():
    ids = np.array([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 0, 0]], np.int32)
    loss = np.array([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], np.int32)
    targets, valid = data.head_targets(ids, loss, num_heads=3)
    assert targets.shape == valid.shape == (3, 2, 6)
    # head 0 at t predicts t+2; head 2 at t predicts t+4
    assert targets[0, 0].tolist() == [12, 13, 14, 15, 0, 0]
    assert valid[0, 0].tolist() == [1, 1, 1, 1, 0, 0]
    assert targets[2, 0].tolist() == [14, 15, 0, 0, 0, 0]
    assert valid[0, 1].tolist() == [1, 1, 0, 0, 0, 0]   # t+2 = 3 is the last loss token
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (3, 9)).astype(np.int32)
    loss = rng.integers(0, 2, (3, 9)).astype(np.int32)
    targets, valid = data.head_targets(ids, loss, num_heads=4)
    for k, b, t in np.ndindex(4, 3, 9):
        ok = t + k + 2 < 9 and loss[b, t + k + 2] == 1
        assert valid[k, b, t] == ok
        assert targets[k, b, t] == (ids[b, t + k + 2] if ok else 0)


def test_head_targets_more_heads_than_tokens():
    targets, valid = data.head_targets(np.ones((1, 3), np.int32), np.ones((1, 3), np.int32), 5)
    assert valid[:, 0].sum(axis=1).tolist() == [1, 0, 0, 0, 0]


def test_padding_does_not_change_per_sample_targets(tok):
    samples = [data.encode_messages(data.normalise_record(messages(c)), tok, 512)
               for c in (CONV[1:3], CONV, CONV[3:])]
    for i, s in enumerate(samples):
        alone = data.collate([s], pad_id=0)
        batch = data.collate(samples, pad_id=0)
        ta, va = data.head_targets(alone["input_ids"], alone["loss_mask"], 3)
        tb, vb = data.head_targets(batch["input_ids"], batch["loss_mask"], 3)
        n = len(s)
        np.testing.assert_array_equal(ta[:, 0], tb[:, i, :n])
        np.testing.assert_array_equal(va[:, 0], vb[:, i, :n])
        assert not vb[:, i, n:].any() and not tb[:, i, n:].any()


# ---------------------------------------------------------------- split and prompts

def test_train_val_split_is_deterministic():
    items = list(range(100))
    train, val = data.train_val_split(items, 0.1, seed=3)
    assert (train, val) == data.train_val_split(items, 0.1, seed=3)
    assert len(val) == 10 and sorted(train + val) == items
    assert train == sorted(train) and val == sorted(val)
    assert val != data.train_val_split(items, 0.1, seed=4)[1]
    assert data.train_val_split(items, 0.0, seed=3) == (items, [])
    assert len(data.train_val_split([1, 2], 0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError):
        data.train_val_split(items, 1.0, seed=0)


def test_split_kept_from_a_previous_run_holds_its_sides_and_splits_only_new_groups(tmp_path):
    groups = [g for g in range(60) for _ in range(2)]             # two replies per prompt
    items = list(range(len(groups)))
    train, val = data.train_val_split(items[:80], 0.25, seed=1, groups=groups[:80])   # prompts 0-39
    data.save_split(tmp_path / "split.json", groups, train, val)
    kept = data.read_split(tmp_path / "split.json")
    assert kept.val == {groups[i] for i in val} and len(kept.val) == 10 and len(kept.train) == 30
    grown_train, grown_val = data.train_val_split(items, 0.25, seed=7, groups=groups, kept=kept)
    assert {groups[i] for i in grown_val if groups[i] < 40} == kept.val
    assert {groups[i] for i in grown_train if groups[i] < 40} == kept.train
    assert len({groups[i] for i in grown_val if groups[i] >= 40}) == 5     # 25 % of the 20 new prompts
    # without the kept split, the grown data would move some old train prompts into val
    moved = [data.train_val_split(items, 0.25, seed=s, groups=groups)[1] for s in range(5)]
    assert any({groups[i] for i in v} & kept.train for v in moved)


def test_read_split_names_what_is_wrong(tmp_path):
    import gzip

    good = tmp_path / "s.json.gz"
    with gzip.open(good, "wt") as f:
        json.dump({"train": [1, 2], "val": [3]}, f)
    assert data.read_split(good) == data.Split({1, 2}, {3})
    for name, text, why in [("a.json", "{", "not a split file"), ("b.json", '{"train": [1]}', "not a split file"),
                            ("c.json", '{"train": [1, 2], "val": [2]}', "in both")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(data.DataError, match=why):
            data.read_split(tmp_path / name)


def test_load_prompts_names_the_bad_line(tmp_path):
    path = tmp_path / "p.jsonl"
    good = json.dumps({"id": 1, "category": "math", "prompt": "What is 2 + 2?"})
    for bad, why in [("{not json", "malformed JSON"),
                     (json.dumps({"id": "2", "category": "math", "prompt": "x"}), "'id'"),
                     (json.dumps({"id": 2, "category": "", "prompt": "x"}), "'category'"),
                     (json.dumps({"id": 2, "category": "math", "prompt": " "}), "'prompt'"),
                     (json.dumps({"id": 1, "category": "math", "prompt": "x"}), "duplicate id")]:
        path.write_text(good + "\n" + bad + "\n")
        with pytest.raises(data.DataError, match=rf"p\.jsonl: line 2\b.*{why}"):
            data.load_prompts(path)


def test_drafted_tokens_are_the_next_tokens_padded_past_the_end():
    ids = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    got = data.drafted_tokens(ids, np.array([0, 1, 1]), np.array([0, 1, 3]), num_heads=3, pad_id=-1)
    assert got.dtype == np.int32
    assert got.tolist() == [[11, 12, 13], [22, 23, -1], [-1, -1, -1]]


def test_gzip_compressed_data_reads_like_plain(tmp_path):
    import gzip

    records = [{"id": i, "category": "c", "prompt": f"p{i}"} for i in range(3)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "p.jsonl").write_text(text)
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.write(text)
    assert data.load_prompts(tmp_path / "p.jsonl.gz") == data.load_prompts(tmp_path / "p.jsonl") == records
