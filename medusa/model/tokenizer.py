"""The inference path's tokenizer, without transformers: Hugging Face `tokenizers` on the unit's
tokenizer.json and the chat template rendered with jinja2 the way transformers renders it.

Why: generation and the benchmark need four things of a tokenizer (the chat template, encode,
decode, the special tokens), and transformers brings torch's integration with them. On a GPU
image whose numpy Jittor must shadow with 1.26, `from transformers import AutoTokenizer` fails
(docs/gpu.md); `tokenizers` and `jinja2` import anywhere. Training keeps transformers' tokenizer
(it needs offset mappings of chat spans, medusa/data/samples.py). tests/test_tokenizer.py holds this one
to transformers' ids and text.

    tok = ChatTokenizer.from_folder(unit_dir)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    text = tok.decode(ids, skip_special_tokens=True)
"""
import json
from datetime import datetime

from medusa.model.weights import tokenizer_folder
from medusa.runtime.errors import UsageError

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value):
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class ChatTokenizer:
    def __init__(self, tokenizer, chat_template=None, special=None, clean_up_spaces=False):
        self._tok = tokenizer
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = bool(clean_up_spaces)
        for name in SPECIAL_NAMES:
            text = (special or {}).get(name)
            setattr(self, name, text)
            setattr(self, f"{name}_id", None if text is None else tokenizer.token_to_id(text))
        self._template = None

    @classmethod
    def from_folder(cls, folder):
        """The tokenizer of a converted unit (or a Hugging Face folder): tokenizer.json, the
        special tokens of tokenizer_config.json, the chat template from chat_template.jinja or
        tokenizer_config.json."""
        from tokenizers import Tokenizer

        folder = tokenizer_folder(folder)
        config = {}
        try:
            if (folder / "tokenizer_config.json").is_file():
                config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:     # json, UTF-8 and the tokenizers library's own (a plain Exception)
            raise UsageError(f"{folder}: its tokenizer files do not read ({type(e).__name__}: {e}): copy "
                             "tokenizer.json and tokenizer_config.json again from the model's source") from None
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        if isinstance(template, list):          # named templates: the default one
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        special = {name: _token_text(config.get(name)) for name in SPECIAL_NAMES}
        return cls(tokenizer, template, special,
                   config.get("clean_up_tokenization_spaces", False))

    def __len__(self):
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, text):
        """{"input_ids": ...} of plain text with the tokenizer's own special tokens (a BOS where
        its post-processor adds one), as transformers' tokenizer(text)."""
        return {"input_ids": self.encode(text, add_special_tokens=True)}

    def encode(self, text, add_special_tokens=False):
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=False):
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True, return_dict=False, **extra):
        """The conversation in the chat template: text (tokenize=False) or its ids, encoded
        without adding special tokens (the template writes them), as transformers does."""
        if return_dict:
            raise UsageError("ChatTokenizer.apply_chat_template returns ids or text, not a dict")
        text = self._compiled().render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                       **{name: getattr(self, name) for name in SPECIAL_NAMES}, **extra)
        return self.encode(text) if tokenize else text

    def _compiled(self):
        if self._template is None:
            if not self.chat_template:
                raise UsageError("this tokenizer has no chat template (chat_template.jinja or tokenizer_config.json)")
            self._template = compile_template(self.chat_template)
        return self._template


def compile_template(source):
    """A chat template compiled as transformers compiles it: a sandboxed, immutable jinja2
    environment with trim_blocks and lstrip_blocks, loop controls, and the helpers templates
    call (raise_exception, strftime_now, tojson that keeps non-ASCII text)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def clean_up_tokenization(text):
    """transformers' clean_up_tokenization: no space before punctuation and common contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
