"""Training data for Medusa heads: chat JSON(L) -> token ids, assistant loss mask, head targets.

Pure python/numpy (no Jittor, no torch) so it is cheap to import and test.

Pipeline: `read_records(path)` -> `normalise_record(rec)` -> `encode_messages(...)` -> `Sample`;
`load_samples(path, tokenizer, max_length)` runs it over a file and counts what it skips and why.
`collate(samples, pad_id)` pads a batch; `head_targets(...)` gives each Medusa head its labels.

Loss mask: 1 on the tokens of assistant replies (the content and the template's end-of-turn
token, e.g. `<|im_end|>` or `</s>`), 0 on system/user turns, on role headers such as
`<|im_start|>assistant\\n` and on whitespace the template writes after the end token.
How it is found: render the conversation once, then for every assistant message i render
`messages[:i]` with the generation prompt (everything up to the reply) and `messages[:i+1]`
(everything up to the end of the reply); their lengths are the character span of reply i in the
full text. The full text is tokenized once with offsets, and a token belongs to the span in
which it starts. Diffing characters rather than token counts keeps the tokenization identical
to the one the model sees (no merges broken at span edges). A template whose prefixes are not
prefixes of the full render (one that rewrites history) makes the record skipped, not mislabelled.

Files are read through Hugging Face `datasets` when a cache folder is given (load_dataset("json")
or ("parquet"), then `map` over the records, cached as memory-mapped Arrow: what the trainer does),
else with plain `json`. Arrow's schema inference rejects some heterogeneous ShareGPT dumps, and
its errors do not name the line: such files fall back to the plain reader, whose errors name the
file and line.
"""
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jinja2 import TemplateError  # transformers renders chat templates with jinja2

from medusa.runtime.errors import UsageError
from medusa.runtime.files import atomic_write

log = logging.getLogger(__name__)

# ShareGPT speaker names -> chat-template roles. ShareGPT dumps also use bing/chatgpt/bard for
# the assistant side.
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
              "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
              "system": "system"}

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

TEMPLATES = ("tokenizer", "vicuna")

# Size limits, checked before anything is tokenized (a 50 MB record took 9.75 GB to tokenize):
MAX_RECORD_BYTES = 1 << 20      # one JSONL line or one record of a JSON array (docs/training.md)
MAX_PROMPT_CHARS = 1 << 18      # one prompt of a prompt set (256 K characters, far past any context)
MAX_TEMPLATE_CHARS = 1 << 16    # a chat template (the largest known ones are ~10 K)


class DataError(UsageError):
    """A whole file is unusable: malformed JSON, or no record survives."""


class SkipRecord(Exception):
    """One record is unusable; `reason` is the key it is counted under."""

    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Sample:
    input_ids: np.ndarray   # [T] int32
    loss_mask: np.ndarray   # [T] int32, 1 on assistant tokens

    def __len__(self):
        return len(self.input_ids)


@dataclass
class LoadReport:
    """What happened to each record of one file."""
    path: str
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)   # reason -> count
    examples: dict = field(default_factory=dict)        # reason -> first "record i: detail"

    def skip(self, index, err):
        self.skipped[err.reason] += 1
        self.examples.setdefault(err.reason, f"record {index}: {err.detail}")

    def summary(self):
        reasons = ", ".join(f"{r}={n} (e.g. {self.examples[r]})" for r, n in self.skipped.items())
        return f"{self.path}: kept {self.kept}/{self.total}" + (f"; skipped {reasons}" if reasons else "")


# ---------------------------------------------------------------- reading and normalising

def read_located(path, partial_tail="error"):
    """[(where, record)] of a JSON array file ("record i") or a JSONL file ("line n"), detected by
    content, optionally gzip-compressed (.gz): the one reader of JSON data in this package. partial_tail="skip" ignores a
    malformed last line that has no newline (what a killed writer leaves); else it is an error
    like any malformed line. Raises DataError naming the file and the line or record."""
    try:
        if str(path).endswith(".gz"):        # shipped data is kept compressed
            import gzip

            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from e
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno} column {e.colno}: malformed JSON: {e.msg}") from e
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply to be records") from None
        located = [(f"record {i}", r) for i, r in enumerate(records)]
        for where, record in located:
            _check_size(path, where, text_bytes(record))
        return located
    lines = text.split("\n")
    located = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        _check_size(path, f"line {lineno}", len(line.encode("utf-8", "surrogatepass")))
        try:
            located.append((f"line {lineno}", json.loads(line)))
        except RecursionError:
            raise DataError(f"{path}: line {lineno}: JSON nested too deeply to be a record") from None
        except json.JSONDecodeError as e:
            if partial_tail == "skip" and lineno == len(lines):
                break            # the unterminated last line of an interrupted append
            raise DataError(f"{path}: line {lineno} (record {len(located)}): malformed JSON: {e.msg}") from e
    return located


def _check_size(path, where, size):
    if size > MAX_RECORD_BYTES:
        raise DataError(f"{path}: {where} is {size / 2 ** 20:.1f} MiB, over the limit of {MAX_RECORD_BYTES >> 20} MiB for "
                        "one record (MAX_RECORD_BYTES): split it or drop it")


def text_bytes(value, depth=0) -> int:
    """About the bytes of JSON `value`: its strings' lengths plus a few per item (nesting
    beyond 64 levels counts as too big)."""
    if depth > 64:
        return MAX_RECORD_BYTES + 1
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, dict):
        return sum(text_bytes(k, depth + 1) + text_bytes(v, depth + 1) + 2 for k, v in value.items())
    if isinstance(value, list):
        return sum(text_bytes(v, depth + 1) + 1 for v in value)
    return 8


def check_line_sizes(path, chunk=1 << 22):
    """DataError naming the first line of a JSONL file longer than MAX_RECORD_BYTES, found by
    streaming the file (nothing is parsed or held): what Arrow and the tokenizer would
    otherwise load whole. JSON array files are checked record by record when parsed."""
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            lineno, length, first = 1, 0, True
            while block := f.read(chunk):
                if first and block.lstrip()[:1] == b"[":
                    return
                first = first and not block.strip()
                parts = block.split(b"\n")
                for part in parts[:-1]:
                    _check_size(path, f"line {lineno}", length + len(part))
                    lineno, length = lineno + 1, 0
                length += len(parts[-1])
                _check_size(path, f"line {lineno}", length)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from e


def read_records(path):
    """Records of a JSON array file or a JSONL file (see read_located). Raises DataError."""
    return [record for _, record in read_located(path)]


def normalise_record(record):
    """`conversations: [{from, value}]` or `messages: [{role, content}]` -> [{role, content}].

    Raises SkipRecord for anything unusable.
    """
    if not isinstance(record, dict):
        raise SkipRecord("not_an_object", f"expected an object, got {type(record).__name__}")
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list):
        raise SkipRecord("no_messages_field", "needs a 'conversations' or 'messages' list")
    if not turns:
        raise SkipRecord("empty_conversation", "the conversation has no messages")
    messages = [_normalise_turn(i, t) for i, t in enumerate(turns)]
    if not any(m["role"] == "assistant" for m in messages):
        raise SkipRecord("no_assistant_turn", "no assistant message to train on")
    return messages


def _normalise_turn(i, turn):
    if not isinstance(turn, dict):
        raise SkipRecord("bad_message", f"message {i} is not an object")
    speaker = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if not isinstance(speaker, str) or not isinstance(content, str):
        raise SkipRecord("bad_message", f"message {i} needs string role/from and content/value")
    role = ROLE_NAMES.get(speaker.lower())
    if role is None:
        raise SkipRecord("unknown_role", f"message {i} has role {speaker!r}")
    return {"role": role, "content": content}


# ---------------------------------------------------------------- rendering and masking

def render(messages, tokenizer, template="tokenizer", add_generation_prompt=False):
    """Conversation text: the tokenizer's chat template, or Vicuna v1.1 with template='vicuna'."""
    if template == "vicuna":
        return _render_vicuna(messages, tokenizer, add_generation_prompt)
    if template != "tokenizer":
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def check_template(tokenizer):
    """A chat template longer than MAX_TEMPLATE_CHARS is a UsageError (a template is code that
    renders every record)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and len(template) > MAX_TEMPLATE_CHARS:
        raise UsageError(f"the tokenizer's chat template is {len(template)} characters, over the limit of "
                         f"{MAX_TEMPLATE_CHARS} (MAX_TEMPLATE_CHARS): fix chat_template in tokenizer_config.json")


def chat_prompt_ids(tokenizer, messages):
    """Token ids of `messages` in the tokenizer's chat template, ending with the assistant header:
    what a model is given to generate the next reply. A template that refuses the conversation
    (raise_exception, e.g. a system message it does not take) is a one-line UsageError."""
    check_template(tokenizer)
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    except TemplateError as e:
        roles = [m.get("role") for m in messages]
        raise UsageError(f"the tokenizer's chat template refused a conversation with roles {roles}: {e} "
                         "(give the turns it expects, e.g. without a system message)") from None
    return [int(t) for t in ids]


def _render_vicuna(messages, tokenizer, add_generation_prompt):
    # FastChat's vicuna_v1.1: "{system} USER: {u} ASSISTANT: {a}</s>USER: ..."; BOS as text so
    # that every template is tokenized the same way (add_special_tokens=False).
    system, rest = VICUNA_SYSTEM, messages
    if messages and messages[0]["role"] == "system":
        system, rest = messages[0]["content"], messages[1:]
    text = (tokenizer.bos_token or "") + system + " "
    for i, m in enumerate(rest):
        if m["role"] == "user":
            text += "USER: " + m["content"] + " "
        elif m["role"] == "assistant":
            text += "ASSISTANT: " + m["content"] + (tokenizer.eos_token or "</s>")
        else:
            raise SkipRecord("template_unsupported", f"vicuna has no system message at position {i}")
    return text + ("ASSISTANT:" if add_generation_prompt else "")


def assistant_spans(messages, tokenizer, template="tokenizer"):
    """(full text, [(start, end)] character spans of each assistant reply incl. its end token)."""
    full = render(messages, tokenizer, template)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], tokenizer, template, add_generation_prompt=True)
        upto = render(messages[:i + 1], tokenizer, template)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise SkipRecord("template_not_prefix_stable",
                             f"rendering up to message {i} is not a prefix of the whole")
        # rstrip: the newline a template writes after the end token belongs to no one.
        spans.append((len(before), max(len(before), len(upto.rstrip()))))
    return full, spans


def encode_messages(messages, tokenizer, max_length, template="tokenizer"):
    """Sample of one normalised conversation, truncated to max_length tokens.

    Raises SkipRecord when no loss token survives truncation (or the template misbehaves).
    """
    try:
        text, spans = assistant_spans(messages, tokenizer, template)
    except TemplateError as e:
        raise SkipRecord("template_error", str(e)) from e
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], np.int32)[:max_length]
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], np.int64)[:max_length]
    mask = np.zeros(len(ids), np.int32)
    for a, b in spans:
        mask[(starts >= a) & (starts < b)] = 1
    if not mask.any():
        raise SkipRecord("no_loss_tokens", f"no assistant token in the first {max_length} tokens")
    return Sample(ids, mask)


def load_samples(path, tokenizer, max_length, template="tokenizer", cache_dir=None):
    """(samples, LoadReport) of one JSON/JSONL(.gz) or Parquet file; bad records are skipped and
    counted. With `cache_dir` the file is read and tokenized through Hugging Face `datasets`
    (load_dataset + map, cached as memory-mapped Arrow under cache_dir: a second run on the same
    file, tokenizer and settings tokenizes nothing); without it, or when Arrow cannot read the
    file (its schema inference rejects heterogeneous records), by the plain JSON reader.
    Both give the same samples.

    Raises DataError when the file is malformed or no record is usable.
    """
    if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat template; pass template='vicuna' for Vicuna models")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("load_samples needs a fast tokenizer (it uses offset mappings)")
    check_template(tokenizer)
    if not str(path).endswith(".parquet"):
        check_line_sizes(path)
    encoded = _encode_with_datasets(path, tokenizer, max_length, template, cache_dir) if cache_dir else None
    if encoded is not None:
        results = [SkipRecord(str(row["skip"]), str(row["detail"])) if row["skip"]
                   else Sample(row["input_ids"].astype(np.int32), row["loss_mask"].astype(np.int32))
                   for row in encoded.with_format("numpy")]
    else:
        results = [_encode_record(record, tokenizer, max_length, template) for record in read_records(path)]
    report, samples = LoadReport(str(path), total=len(results)), []
    for i, result in enumerate(results):
        if isinstance(result, SkipRecord):
            report.skip(i, result)
        else:
            samples.append(result)
    report.kept = len(samples)
    if not samples:
        raise DataError(f"no usable records: {report.summary()}")
    (log.warning if report.skipped else log.info)("%s", report.summary())
    return samples, report


def _drop_nones(value):
    """Arrow gives every record every column (None where a record has no such key): drop them,
    so a record reads as it was written."""
    if isinstance(value, dict):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nones(v) for v in value]
    return value


def _encode_record(record, tokenizer, max_length, template):
    """The Sample of one raw record, or the SkipRecord saying why it has none."""
    try:
        return encode_messages(normalise_record(record), tokenizer, max_length, template)
    except SkipRecord as err:
        return err


def _encode_batch(batch, tokenizer, max_length, template):
    """datasets.map function: raw records -> input_ids, loss_mask, and skip / detail ("" = kept)."""
    out = {"input_ids": [], "loss_mask": [], "skip": [], "detail": []}
    for i in range(len(next(iter(batch.values())))):
        s = _encode_record(_drop_nones({k: v[i] for k, v in batch.items()}), tokenizer, max_length, template)
        row = ([], [], s.reason, s.detail) if isinstance(s, SkipRecord) else \
            (s.input_ids.tolist(), s.loss_mask.tolist(), "", "")
        for key, value in zip(out, row):
            out[key].append(value)
    return out


def _encode_with_datasets(path, tokenizer, max_length, template, cache_dir):
    """The file's records encoded by encode_messages, as a cached Arrow dataset; None when
    `datasets` is not installed or cannot read the file (then the plain reader does, and its
    errors name the line)."""
    try:
        import datasets
    except ImportError:
        return None
    builder = "parquet" if str(path).endswith(".parquet") else "json"
    try:
        raw = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache_dir))
    except Exception as e:   # pyarrow / datasets raise many kinds here: the fallback reports properly
        log.warning("%s: datasets cannot read it (%s); using the plain JSON reader",
                    path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return None
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "loss_mask": datasets.Sequence(datasets.Value("int8")),
                                  "skip": datasets.Value("string"), "detail": datasets.Value("string")})
    try:
        return raw.map(_encode_batch, batched=True, batch_size=256, remove_columns=raw.column_names,
                       features=features, fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, template=template),
                       desc=f"tokenize {Path(path).name}")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a string): save it as UTF-8") from None


# ---------------------------------------------------------------- batches and head labels

def collate(samples, pad_id):
    """Right-pad to the longest sample of the batch -> dict of int32 [B, T] arrays:
    input_ids, attention_mask (1 = real token), loss_mask."""
    B, T = len(samples), max(len(s) for s in samples)
    batch = {"input_ids": np.full((B, T), pad_id, np.int32),
             "attention_mask": np.zeros((B, T), np.int32),
             "loss_mask": np.zeros((B, T), np.int32)}
    for b, s in enumerate(samples):
        n = len(s)
        batch["input_ids"][b, :n] = s.input_ids
        batch["attention_mask"][b, :n] = 1
        batch["loss_mask"][b, :n] = s.loss_mask
    return batch


def head_targets(input_ids, loss_mask, num_heads):
    """Labels of the Medusa heads: (targets [K, B, T] int32, valid [K, B, T] int32).

    The base lm_head at position t predicts token t+1; head k (0-based) at position t predicts
    token t+k+2. valid[k, b, t] = 1 iff t+k+2 < T and loss_mask[b, t+k+2] = 1 (padding has
    loss_mask 0, so this also means t+k+2 is inside the sample). Invalid targets are 0.
    """
    input_ids, loss_mask = np.asarray(input_ids), np.asarray(loss_mask)
    B, T = input_ids.shape
    targets = np.zeros((num_heads, B, T), np.int32)
    valid = np.zeros((num_heads, B, T), np.int32)
    for k in range(num_heads):
        shift = k + 2
        if shift >= T:
            break
        targets[k, :, :T - shift] = input_ids[:, shift:]
        valid[k, :, :T - shift] = loss_mask[:, shift:]
    targets *= valid   # no stray token ids where nothing is learned
    return targets, valid


def drafted_tokens(input_ids, rows, positions, num_heads, pad_id=0):
    """The tokens the heads read at (rows[i], positions[i]) of input_ids [B, T]: [N, K] int32 with
    [i, k] = token t+k+1 (fed to heads that read the drafted tokens, e.g. rnn); pad_id past the end."""
    ids = np.asarray(input_ids)
    padded = np.concatenate([ids, np.full((ids.shape[0], num_heads + 1), pad_id, ids.dtype)], axis=1)
    positions = np.asarray(positions)
    return np.stack([padded[rows, positions + k + 1] for k in range(num_heads)], axis=-1).astype(np.int32)


def train_val_split(items, val_ratio, seed, groups=None, kept=None):
    """(train, val): a seeded random val_ratio share goes to val; both keep the input order.
    With `groups` (one key per item, e.g. the prompt a reply answers) whole groups are split,
    so no prompt has a reply on both sides. With `kept` (a previous split, read_split) its
    groups stay on their side and only the groups it does not list are split: heads trained on
    it can be fine-tuned on grown data without training on its validation prompts."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    keys = list(range(len(items))) if groups is None else [int(g) for g in groups]
    if len(keys) != len(items):
        raise ValueError(f"{len(keys)} groups for {len(items)} items")
    old_train, old_val = (set(), set()) if kept is None else (kept.train, kept.val)
    unique = sorted(set(keys) - old_train - old_val)
    n = len(unique)
    n_val = int(round(n * val_ratio))
    if val_ratio > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)   # a nonzero ratio always gives both sides something
    in_val = {unique[i] for i in np.random.default_rng(seed).permutation(n)[:n_val]} | old_val
    return ([x for x, g in zip(items, keys) if g not in in_val], [x for x, g in zip(items, keys) if g in in_val])


@dataclass
class Split:
    """Which groups (prompt ids) a run trained and validated on: split.json in its output_dir."""
    train: set
    val: set


def save_split(path, groups, train, val):
    """Write the groups of the samples `train` and `val` (indices into `groups`) as JSON."""
    record = {"train": sorted({int(groups[i]) for i in train}), "val": sorted({int(groups[i]) for i in val})}
    atomic_write(path, json.dumps(record) + "\n")


def read_split(path) -> Split:
    """A split.json (save_split; .json.gz too), or a DataError saying what is wrong with it."""
    what = "pass a run's split.json, which lists the prompt ids it trained on ('train') and held out ('val')"
    try:
        located = read_located(path)             # one JSON record (gzip too), or an error naming the line
        (_, record), = located
        train, val = ({int(g) for g in record[side]} for side in ("train", "val"))
    except DataError as e:
        raise DataError(f"not a split file: {e}; {what}") from e
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{path}: not a split file ({type(e).__name__}: {e}); {what}") from e
    if train & val:
        raise DataError(f"{path}: {len(train & val)} prompt ids are in both 'train' and 'val', e.g. "
                        f"{min(train & val)}")
    return Split(train, val)


# ---------------------------------------------------------------- token samples (.npz)
# Samples as token ids, already rendered with the chat template: what a machine without a
# tokenizer trains on (the GPU image), and the exact tokens the base model wrote when distilled.
#     input_ids [sum T] int32, loss_mask [sum T] int8, lengths [n] int64,
#     groups [n] int64 (the prompt id: train/val split by prompt), temperature [n] float32
#     (0 = greedy reply), meta: a JSON string (pad_id, eos_ids, source, ...)
# Read with allow_pickle=False: nothing in the file can run code.

@dataclass
class TokenSamples:
    samples: list                 # [Sample]
    groups: np.ndarray            # [n] int64
    temperature: np.ndarray       # [n] float32
    meta: dict


def save_token_samples(path, samples, groups, temperature, meta):
    """Write token samples atomically (compressed npz)."""
    import io

    if not (len(samples) == len(groups) == len(temperature)) or not samples:
        raise ValueError(f"{len(samples)} samples, {len(groups)} groups, {len(temperature)} temperatures")
    buf = io.BytesIO()
    np.savez_compressed(
        buf, input_ids=np.concatenate([s.input_ids for s in samples]).astype(np.int32),
        loss_mask=np.concatenate([s.loss_mask for s in samples]).astype(np.int8),
        lengths=np.asarray([len(s) for s in samples], np.int64), groups=np.asarray(groups, np.int64),
        temperature=np.asarray(temperature, np.float32), meta=np.array(json.dumps(meta)))
    atomic_write(path, buf.getvalue())


def read_npz(path, keys, what, fix):
    """{key: array} of the `keys` of an .npz file, read without pickles and only after each
    member's header is checked against the file: a member may not claim more bytes than its
    zip entry holds, nor its zip entry more than its compressed bytes can inflate to (deflate
    expands at most MAX_INFLATE times). Any fault is a DataError naming the file; `fix` says what to do."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as z:
            for key in keys:
                _check_npz_member(z, key, path)
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in keys}
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise DataError(f"{path}: not a {what} ({type(e).__name__}: {e}); {fix}") from e


MAX_INFLATE = 1032              # deflate's largest expansion ratio


def _check_npz_member(z, key, path):
    info = z.getinfo(f"{key}.npy")
    if info.compress_type == 0 and info.file_size != info.compress_size or \
            info.file_size > MAX_INFLATE * info.compress_size + 1024:
        raise DataError(f"{path}: member {key} claims {info.file_size} bytes from {info.compress_size} stored: "
                        "the file is corrupt")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format._read_array_header(f, version, max_header_size=1 << 16)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize + f.tell()
    if dtype.hasobject or need > info.file_size:
        raise DataError(f"{path}: member {key} claims shape {shape} of {dtype} ({need} bytes), more than its "
                        f"{info.file_size} bytes: the file is truncated or corrupt")


TOKEN_KEYS = ("input_ids", "loss_mask", "lengths", "groups", "temperature", "meta")


def load_token_samples(path, max_length=None, vocab_size=None) -> TokenSamples:
    """TokenSamples of a .npz written by save_token_samples, each cut to max_length tokens
    (a sample left without a loss token is dropped). Every id must be >= 0 (and < vocab_size
    when given), every length >= 0 and the lengths must add up to the ids. Raises DataError
    naming the file."""
    fix = "write one with scripts/distill_ids.py samples"
    f = read_npz(path, TOKEN_KEYS, "token-samples file", fix)
    ids, mask, lengths, groups, temperature = (f[k] for k in TOKEN_KEYS[:5])
    try:
        meta = json.loads(str(f["meta"]))
    except (json.JSONDecodeError, RecursionError) as e:
        raise DataError(f"{path}: its meta is not JSON ({e}); {fix}") from e
    if any(a.ndim != 1 for a in (ids, mask, lengths, groups, temperature)) or \
            not all(a.dtype.kind in "iu" for a in (ids, mask, lengths, groups)) or not isinstance(meta, dict):
        raise DataError(f"{path}: token-samples arrays must be 1-D integer arrays (and meta a JSON object); {fix}")
    if len(lengths) and lengths.min() < 0:
        raise DataError(f"{path}: sample {int(np.argmax(lengths < 0))} has negative length {int(lengths.min())}; {fix}")
    if lengths.sum() != len(ids) or len(mask) != len(ids) or not len(groups) == len(temperature) == len(lengths):
        raise DataError(f"{path}: token-samples arrays disagree in length (lengths add up to {int(lengths.sum())}, "
                        f"{len(ids)} ids, {len(mask)} mask values); {fix}")
    limit = vocab_size if vocab_size is not None else 2 ** 31      # ids are int32 on the way in
    if len(ids) and (ids.min() < 0 or ids.max() >= limit):
        bad = int(np.argmax((ids < 0) | (ids >= limit)))
        raise DataError(f"{path}: token id {int(ids[bad])} at position {bad} is outside the vocabulary"
                        f"{f' of {vocab_size} (vocab_size)' if vocab_size else ''}: the samples were made for "
                        "another model or are corrupt")
    samples, keep = [], []
    for i, (a, b) in enumerate(zip(np.cumsum(lengths) - lengths, np.cumsum(lengths))):
        b = a + min(b - a, max_length or b - a)
        if mask[a:b].any():
            samples.append(Sample(ids[a:b].astype(np.int32), mask[a:b].astype(np.int32)))
            keep.append(i)
    if not samples:
        raise DataError(f"{path}: no sample has a loss token in its first {max_length} tokens")
    return TokenSamples(samples, groups[keep], temperature[keep], meta)


def reply_sample(prompt_ids, reply_ids, end_id, max_new_tokens):
    """The Sample of one distilled reply: prompt (no loss) + reply + the end-of-turn token
    (loss), as encode_messages makes of the same conversation; a reply cut at max_new_tokens
    gets no end token (the model did not write one)."""
    tail = [end_id] if len(reply_ids) < max_new_tokens else []
    ids = np.asarray(list(prompt_ids) + list(reply_ids) + tail, np.int32)
    mask = np.zeros(len(ids), np.int32)
    mask[len(prompt_ids):] = 1
    return Sample(ids, mask)


# ---------------------------------------------------------------- prompt sets

def load_prompts(path):
    """Prompts of a JSONL file of {"id": int, "category": str, "prompt": str}, validated.
    Categories are free-form labels (the file's own). Raises DataError naming the file and
    line of the first bad line."""
    prompts, seen = [], set()
    for where, p in read_located(path):
        where = f"{path}: {where}"
        _check_prompt(p, where)
        if p["id"] in seen:
            raise DataError(f"{where}: duplicate id {p['id']}")
        seen.add(p["id"])
        prompts.append(p)
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def _check_prompt(p, where):
    if not isinstance(p, dict):
        raise DataError(f"{where}: expected an object")
    if not isinstance(p.get("id"), int) or isinstance(p.get("id"), bool):
        raise DataError(f"{where}: 'id' must be an integer")
    if not isinstance(p.get("category"), str) or not p["category"].strip():
        raise DataError(f"{where}: 'category' must be a non-empty string, got {p.get('category')!r}")
    if not isinstance(p.get("prompt"), str) or not p["prompt"].strip():
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    if len(p["prompt"]) > MAX_PROMPT_CHARS:
        raise DataError(f"{where}: the prompt is {len(p['prompt'])} characters, over the limit of {MAX_PROMPT_CHARS} "
                        "(MAX_PROMPT_CHARS): shorten it")
