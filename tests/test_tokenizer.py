"""medusa.tokenizer.ChatTokenizer (the inference path's tokenizer, no transformers) against
transformers' own tokenizer on the same files: chat-template ids, text, decode, special tokens."""
import pytest
from transformers import AutoTokenizer

import tiny
from medusa.errors import MissingFileError
from medusa.prompt_sets import DEFAULT_PROMPTS, load_prompt_set
from medusa.tokenizer import ChatTokenizer

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
    from medusa import weights

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
