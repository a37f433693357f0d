"""medusa.model.tokenizer.ChatTokenizer (the inference path's tokenizer, no transformers) against
transformers' own tokenizer on the same files: chat-template ids, text, decode, special tokens."""
import pytest
from transformers import AutoTokenizer

from medusa.data.prompt_sets import DEFAULT_PROMPTS, load_prompt_set
from medusa.model.tokenizer import ChatTokenizer
from medusa.runtime.errors import MissingFileError

CONVERSATIONS = [
    [{"role": "user", "content": "Write a haiku about rain."}],
    [{"role": "system", "content": "You answer in JSON."}, {"role": "user", "content": "Describe a cabin: {\"rooms\": 3}"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Translate 'naïve café' to German, don't explain."}],
]


def pairs(tiny_hf, smollm2_dir):
    yield "tiny", tiny_hf("llama")
    if smollm2_dir is not None:
        yield "smollm2", smollm2_dir


@pytest.fixture(scope="module")
def smollm2_dir():
    """The converted embedded default's folder when it is already converted (no conversion here)."""
    from medusa.model import weights

    folder = weights.default_model_dir()
    return folder if (folder / "tokenizer.json").is_file() else None


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_chat_template_ids_and_text_equal_transformers(tiny_hf, smollm2_dir, which):
    folder = dict(pairs(tiny_hf, smollm2_dir)).get(which)
    if folder is None:
        pytest.skip("the embedded default is not converted on this machine")
    ours, theirs = ChatTokenizer.from_folder(folder), AutoTokenizer.from_pretrained(str(folder))
    prompts = [p.turns[0] for p in load_prompt_set(DEFAULT_PROMPTS)]
    conversations = CONVERSATIONS + [[{"role": "user", "content": p}] for p in prompts]
    for messages in conversations:
        for gen in (True, False):
            assert ours.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False) == \
                theirs.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            want = theirs.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True, return_dict=False)
            ids = ours.apply_chat_template(messages, add_generation_prompt=gen)
            assert ids == [int(t) for t in want]
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours("plain text, no template")["input_ids"] == theirs("plain text, no template")["input_ids"]
    for name in ("eos_token", "bos_token", "pad_token", "eos_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert len(ours) == len(theirs)


def test_a_folder_without_tokenizer_json_is_a_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="no tokenizer.json"):
        ChatTokenizer.from_folder(tmp_path)


def test_template_helpers_and_missing_template(tiny_hf, tmp_path):
    """A template's raise_exception reaches the caller as a TemplateError (chat_prompt_ids turns
    it into a one-line error); a named-template list uses its default; no template is a UsageError."""
    import json
    import shutil

    from jinja2 import TemplateError

    from medusa.data.samples import chat_prompt_ids
    from medusa.runtime.errors import UsageError

    folder = tmp_path / "tok"
    shutil.copytree(tiny_hf("llama"), folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "{% if messages[0]['role'] != 'user' %}"
                                "{{ raise_exception('first message must be user') }}{% endif %}"
                                "{{ messages[0]['content'] | tojson }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = ChatTokenizer.from_folder(folder)
    assert tok.apply_chat_template([{"role": "user", "content": "café"}], tokenize=False) == '"café"'
    with pytest.raises(TemplateError, match="first message must be user"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])
    with pytest.raises(UsageError, match=r"refused a conversation with roles \['system'\]: first message must be user"):
        chat_prompt_ids(tok, [{"role": "system", "content": "x"}])
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="no chat template"):
        ChatTokenizer.from_folder(folder).apply_chat_template([{"role": "user", "content": "x"}])
