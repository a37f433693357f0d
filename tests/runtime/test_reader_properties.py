"""Property-based tests of the file readers (issue 36, item 6): a valid file of each format,
randomly truncated or with random bytes flipped (most often in its header), either loads or
raises our one-line UsageError, within a time limit: never another exception, a hang or an
allocation the file cannot back. Sizes are tiny so the whole file runs in well under a minute."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medusa.app.results import read_results
from medusa.data import samples as data
from medusa.decoding.tree import load_choices
from medusa.heads import io as head_io
from medusa.heads.families import HeadConfig, build_heads
from medusa.model import weights
from medusa.model.config import ModelConfig
from medusa.runtime.errors import UsageError
from medusa.runtime.files import tensor_bytes

CONFIG = dict(model_type="llama", vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)
FAST = settings(max_examples=120, deadline=3000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def damaged(raw: bytes):
    """A strategy of `raw` cut short, or with 1-8 bytes XOR-ed (half of them in the first 64)."""
    n = len(raw)
    position = st.one_of(st.integers(0, min(n, 64) - 1), st.integers(0, n - 1))
    flips = st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=8)

    def flip(changes):
        out = bytearray(raw)
        for i, x in changes:
            out[i] ^= x
        return bytes(out)
    return st.one_of(st.integers(0, n - 1).map(lambda k: raw[:k]), flips.map(flip))


def loads_or_refuses(read, path, raw):
    path.write_bytes(raw)
    try:
        read(path)
    except UsageError as e:
        assert "\n" not in str(e).strip() or len(str(e)) < 4000   # cli.run prints it as one line
    except RecursionError:
        pytest.fail(f"{path.name}: RecursionError")


def random_tensors():
    cfg = ModelConfig.from_dict(CONFIG)
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in weights.expected_shapes(cfg).items()}


# ---------------------------------------------------------------- base weights
def read_unit(path):
    """What load_model reads of a converted unit, without building the Jittor model."""
    config, tensors = weights.read_checkpoint(path)
    weights.check_tensors(ModelConfig.from_dict(config, path), tensors, path)


@pytest.fixture(scope="module")
def safetensors_raw():
    return tensor_bytes(random_tensors(), ".safetensors", {"config": json.dumps(CONFIG)})


@given(st.data())
@FAST
def test_safetensors(tmp_path, safetensors_raw, data_):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    loads_or_refuses(read_unit, tmp_path / "model.safetensors", data_.draw(damaged(safetensors_raw)))


def gguf_bytes(path):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_context_length(64)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    inverse = {v: k for k, v in weights._GGUF_NAMES.items()}
    for name, value in random_tensors().items():
        if name not in names:          # model.layers.0.<module>.<param>.weight -> blk.0.<kind>.weight
            module = name.split(".", 3)[3].rsplit(".", 1)[0]
            names[name] = f"blk.0.{inverse[module]}.weight"
        writer.add_tensor(names[name], value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def gguf_raw(tmp_path_factory):
    raw = gguf_bytes(tmp_path_factory.mktemp("gguf") / "m.gguf")
    path = tmp_path_factory.mktemp("gguf-ok") / "m.gguf"
    path.write_bytes(raw)
    config, tensors = weights.read_gguf(path)           # the undamaged file loads, with the right shapes
    assert config["num_hidden_layers"] == 1 and tensors["model.embed_tokens.weight"].shape == (32, 8)
    return raw


@given(st.data())
@FAST
def test_gguf(tmp_path, gguf_raw, data_):
    loads_or_refuses(weights.read_gguf, tmp_path / "m.gguf", data_.draw(damaged(gguf_raw)))


# ---------------------------------------------------------------- heads, token samples, results, trees
@pytest.fixture(scope="module")
def heads_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("heads") / "heads.jtr"
    head_io.save_heads(build_heads(HeadConfig(num_heads=2, hidden_size=8, vocab_size=32)), path)
    return path


@given(st.data())
@FAST
def test_jtr_heads(heads_file, data_):
    raw = heads_file.read_bytes()
    try:
        loads_or_refuses(head_io.load_heads, heads_file, data_.draw(damaged(raw)))
    finally:
        heads_file.write_bytes(raw)


@given(st.data())
@FAST
def test_head_config(heads_file, data_):
    config = head_io.config_path(heads_file)
    raw = config.read_bytes()
    try:
        loads_or_refuses(lambda _: head_io.load_heads(heads_file), config, data_.draw(damaged(raw)))
    finally:
        config.write_bytes(raw)


@pytest.fixture(scope="module")
def npz_raw(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "samples.npz"
    rng = np.random.default_rng(0)
    items = [data.Sample(rng.integers(0, 32, n).astype(np.int32), np.ones(n, np.int32)) for n in (5, 9, 3)]
    data.save_token_samples(path, items, [0, 1, 2], [0.0, 0.0, 1.0], {"pad_id": 0})
    assert len(data.load_token_samples(path, vocab_size=32).samples) == 3
    return path.read_bytes()


@given(st.data())
@FAST
def test_token_samples_npz(tmp_path, npz_raw, data_):
    loads_or_refuses(lambda p: data.load_token_samples(p, vocab_size=32), tmp_path / "s.npz", data_.draw(damaged(npz_raw)))


RESULTS = json.dumps({"config": {"tree": [[0], [0, 0]], "max_new_tokens": 8},
                      "samples": [{"id": 1, "output_ids": [1, 2, 3], "wall_time": 0.5}]}).encode()
TREE = json.dumps([[0], [0, 0], [1], [0, 1], [0, 0, 0]]).encode()


@given(st.data())
@FAST
def test_results_json(tmp_path, data_):
    loads_or_refuses(read_results, tmp_path / "results.json", data_.draw(damaged(RESULTS)))


@given(st.data())
@FAST
def test_tree_json(tmp_path, data_):
    loads_or_refuses(lambda p: load_choices(str(p), num_heads=4, vocab_size=32), tmp_path / "tree.json",
                     data_.draw(damaged(TREE)))
