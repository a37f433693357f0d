"""weight_convert.py and medusa/model/weights.py: every input format converts to the same weights, and
bad input fails with an error that names the file, the tensor and the shapes."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

import weight_convert
from medusa.model import weights


def converted(src, out, dtype="float32"):
    weight_convert.main(["--base_model_path", str(src), "--output", str(out), "--dtype", dtype])
    with open(out, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def reference(tiny_pkl):
    with open(tiny_pkl("llama"), "rb") as f:
        return pickle.load(f)


def copy_meta(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    return dst


def test_converted_folder_has_config_and_tokenizer(tiny_pkl):
    folder = tiny_pkl("qwen3").parent
    assert {"model.pkl", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen3"
    assert weights.load_tokenizer(folder)("hello there")["input_ids"]


def test_fp16_is_the_default_dtype(tiny_hf, tmp_path, reference):
    weight_convert.main(["--base_model_path", str(tiny_hf("llama")), "--output", str(tmp_path / "m.pkl")])
    with open(tmp_path / "m.pkl", "rb") as f:
        half = pickle.load(f)
    assert set(half) == set(reference)
    for name, value in half.items():
        assert value.dtype == np.float16
        np.testing.assert_allclose(value.astype(np.float32), reference[name], atol=2e-3, rtol=1e-3)


def test_sharded_safetensors_and_torch_bins_convert_identically(tiny_hf, tmp_path, reference):
    import transformers

    src = tiny_hf("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype="float32")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    copy_meta(src, sharded)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    single_bin = copy_meta(src, tmp_path / "bin")
    torch.save(state, single_bin / "pytorch_model.bin")
    names = sorted(state)
    two_bins = copy_meta(src, tmp_path / "bins")
    for i, part in enumerate((names[::2], names[1::2])):
        torch.save({k: state[k] for k in part}, two_bins / f"pytorch_model-0000{i + 1}-of-00002.bin")

    for folder in (sharded, single_bin, two_bins):
        got = converted(folder, tmp_path / f"{folder.name}.pkl")
        assert set(got) == set(reference), folder.name
        for name in reference:
            np.testing.assert_array_equal(got[name], reference[name], err_msg=f"{folder.name}: {name}")


def convert_edited(tiny_hf, tmp_path, reference, edit):
    """Convert the tiny Llama saved as pytorch_model.bin after `edit(state)` changed its tensors."""
    folder = copy_meta(tiny_hf("llama"), tmp_path / "edited")
    state = {k: torch.from_numpy(v) for k, v in reference.items()}
    edit(state)
    torch.save(state, folder / "pytorch_model.bin")
    return converted(folder, tmp_path / "x.pkl")


def test_missing_tensor_is_named(tiny_hf, tmp_path, reference):
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        convert_edited(tiny_hf, tmp_path, reference, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))


def test_wrong_shape_names_tensor_expected_and_found(tiny_hf, tmp_path, reference):
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape "
                                         r"\(64, 64\), expected \(32, 64\)"):
        convert_edited(tiny_hf, tmp_path, reference,
                       lambda s: s.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)}))


def test_unexpected_tensor_is_named(tiny_hf, tmp_path, reference):
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['model\.layers\.9\.mlp\.up_proj\.weight'\]"):
        convert_edited(tiny_hf, tmp_path, reference,
                       lambda s: s.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}))


def test_unknown_model_type(tiny_hf, tmp_path):
    folder = tmp_path / "gpt"
    shutil.copytree(tiny_hf("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt_neox'; supported: .*llama.*qwen2.*qwen3"):
        converted(folder, tmp_path / "x.pkl")


def test_unreadable_files(tiny_hf, tmp_path):
    folder = copy_meta(tiny_hf("qwen2"), tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match=r"cannot read safetensors file .*model\.safetensors"):
        converted(folder, tmp_path / "x.pkl")
    bad_pkl = tmp_path / "bad" / "model.pkl"
    bad_pkl.parent.mkdir()
    shutil.copy(folder / "config.json", bad_pkl.parent / "config.json")
    bad_pkl.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read converted weights .*model\.pkl"):
        weights.load_model(bad_pkl)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.load_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        weights.load_model(empty)


def test_pkl_without_config_beside_it(tiny_pkl, tmp_path):
    lonely = tmp_path / "model.pkl"
    shutil.copy(tiny_pkl("llama"), lonely)
    with pytest.raises(FileNotFoundError, match="no config.json beside it"):
        weights.load_model(lonely)
