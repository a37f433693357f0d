"""Session fixtures shared by the test files.

    tiny_hf(family)    -> folder of a transformers-saved tiny random model (tests/support.py)
    tiny_pkl(family)   -> that model converted by weight_convert.py in fp32 (model.pkl + config + tokenizer)
    smollm2_pkl        -> the embedded default SmolLM2-135M-Instruct converted in fp32 (slow)

Models are built once per session under pytest's tmp dir; SmolLM2 is converted into
$MEDUSA_JITTOR_HOME (default ~/.cache/medusa-jittor), where later sessions find it.
"""
import pytest
import support


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            built[family] = support.make_hf_model(family, tmp_path_factory.mktemp(f"hf-{family}"))
        return built[family]
    return get


@pytest.fixture(scope="session")
def tiny_pkl(tiny_hf, tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            import weight_convert

            out = tmp_path_factory.mktemp(f"jt-{family}") / "model.pkl"
            weight_convert.main(["--base_model_path", str(tiny_hf(family)), "--output", str(out),
                                 "--dtype", "float32"])
            built[family] = out
        return built[family]
    return get


@pytest.fixture(scope="session")
def smollm2_pkl():
    from medusa.model import weights

    return weights.ensure_default_model("float32")
