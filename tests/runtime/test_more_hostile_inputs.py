"""More of the hostile inputs (issue of December 7): each a one-line error (UsageError) that names
what and where, before a model loads where possible."""
import json

import pytest
from support import make_tokenizer

from medusa.app.settings import GenerationSettings
from medusa.bench.tune import TuneArgs
from medusa.cli.generate import GenerateArgs
from medusa.data.samples import load_samples
from medusa.model.tokenizer import ChatTokenizer
from medusa.runtime.errors import UsageError
from medusa.training.args import TrainArgs, check_args
from medusa.vocab.reduce import read_vocab


@pytest.mark.parametrize("seed", [-1, 2 ** 32])
def test_seeds_outside_what_numpy_takes(tmp_path, seed):
    with pytest.raises(UsageError, match=r"--seed must be in \[0, 2\^32\)"):
        GenerationSettings(seed=seed)
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(UsageError, match=r"--seed must be in \[0, 2\^32\)"):
        check_args(TrainArgs(data_path=str(data), output_dir=str(tmp_path / "out"), seed=seed))


def test_tune_sizes_beyond_a_tree():
    with pytest.raises(UsageError, match=r"--sizes '100000': node counts must be in 1\.\.1024"):
        TuneArgs(sizes="100000")


def test_prompt_that_is_not_utf8():
    # argv bytes that are not UTF-8 reach Python as surrogate escapes
    with pytest.raises(UsageError, match="--prompt is not valid UTF-8 \\(byte 1 of it\\)"):
        GenerateArgs(prompt="a\udcffb")


def test_broken_vocab_json(tmp_path):
    (tmp_path / "vocab.json").write_text("{broken")
    with pytest.raises(UsageError, match=r"vocab.json: not a readable vocab.json \(JSONDecodeError"):
        read_vocab(tmp_path)
    (tmp_path / "vocab.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not a readable vocab.json \\(UnicodeDecodeError"):
        read_vocab(tmp_path)


@pytest.mark.parametrize("content", [b'{"version": "1.0", "model": {', b"\xff\xfe\x00", b""])
def test_truncated_or_binary_tokenizer_json(tmp_path, content):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(UsageError, match="its tokenizer files do not read"):
        ChatTokenizer.from_folder(tmp_path)


def test_training_data_that_is_not_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]})
    path.write_bytes((good + "\n").encode() + b'{"conversations": [{"from": "human", "value": "\xff\xfe"}]}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl: not UTF-8"):
        load_samples(path, make_tokenizer(), 64, cache_dir=tmp_path / "cache")
