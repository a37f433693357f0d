"""Settings shared by every entry point, one dataclass per concern, validated when parsed.

    BaseModelArgs        which base model, on which device, in which dtype
    ModelArgs            BaseModelArgs and the draft heads that decode with it
    GenerationSettings   what to generate: length, sampling, Medusa acceptance, tree, seed

generate, the benchmark, the tuner and distillation parse these same classes (cli.parse), and
training's TrainArgs extends BaseModelArgs, so a flag has one spelling, one meaning and one
default everywhere, and the results files record them as they were resolved. Pure python: nothing here loads a model or imports Jittor.

Decisions (docs/generating.md): `--temperature 0` is greedy decoding, the same as `--greedy`
(the default); `--sampling_mode sample` (speculative sampling, distributed exactly as plain
sampling) is the default way Medusa accepts drafts when sampling.
"""
from dataclasses import dataclass, field
from pathlib import Path

from medusa.decoding.sampling import Sampling
from medusa.decoding.tree import check_spec  # pure python
from medusa.runtime.errors import MissingFileError, UsageError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("", "float16", "float32")
SAMPLING_MODES = ("sample", "typical")
DRAFT_WORDS = ("auto", "none", "")   # --draft_vocab values that name no file
DRAFT_SOURCES = ("heads", "retrieval", "heads+retrieval")


def _help(text, **extra):
    return {"help": text, **extra}


@dataclass
class BaseModelArgs:
    """The base model: which weights, on which device, in which dtype. Every command that runs a
    model reads these flags; training takes only these (it makes heads, it does not read them)."""
    base_model_path: str = field(default="", metadata=_help(
        "base model: a Hugging Face folder, a .gguf or a converted .pkl; empty = the embedded SmolLM2"))
    jittor_base_weights: str = field(default="", metadata=_help(
        "a converted .pkl (weight_convert.py), with config.json and the tokenizer beside it"))
    device: str = field(default="auto", metadata=_help("auto (cuda when Jittor has it), cpu or cuda",
                                                       choices=DEVICES))
    dtype: str = field(default="", metadata=_help(
        "compute dtype; empty = float16 on a GPU, float32 on the CPU", choices=DTYPES))

    def __post_init__(self):
        self._check_paths("base_model_path", "jittor_base_weights")

    def _check_paths(self, *flags):
        for flag in flags:
            value = getattr(self, flag)
            if value and not Path(value).exists():
                raise MissingFileError(f"--{flag} {value}: no such file or folder")

    @property
    def is_default_model(self) -> bool:
        return not (self.base_model_path or self.jittor_base_weights)


@dataclass
class ModelArgs(BaseModelArgs):
    """The base model and the draft heads that decode with it."""
    medusa_weights: str = field(default="", metadata=_help(
        "draft heads (.jtr with <name>_config.json beside it); empty = the shipped heads of the "
        "default model where a command needs heads"))
    draft_vocab: str = field(default="auto", metadata=_help(
        "the token ids the heads may draft: a JSON file (python -m medusa vocab draft), whose lm_head "
        "columns alone the heads then project onto (lossless: the base model verifies every token); "
        "auto = the draft_vocab.json beside the heads on a CPU, if there is one (a GPU projects the "
        "whole vocabulary at little cost); none = the whole vocabulary"))

    draft: str = field(default="heads", metadata=_help(
        "what drafts the tokens the base model verifies: heads (the Medusa heads of --medusa_weights) or "
        "retrieval (continuations of the text so far found in the prompt and the reply: no heads, no "
        "training; decoding/retrieval.py) or heads+retrieval (both, merged into one tree a step)",
        choices=DRAFT_SOURCES))
    retrieval_nodes: int = field(default=0, metadata=_help(
        "--draft retrieval: tree nodes the retrieved continuations may take a step; 0 = the device's "
        "default (decoding/retrieval.py DEVICE_DEFAULTS)"))

    def __post_init__(self):
        super().__post_init__()
        if self.retrieval_nodes < 0:
            raise UsageError(f"--retrieval_nodes must be >= 0 (0 = the device's default), got {self.retrieval_nodes}")
        if self.draft == "retrieval" and self.medusa_weights:
            raise UsageError("--draft retrieval drafts without heads: drop --medusa_weights "
                             f"{self.medusa_weights}, or use --draft heads")
        self._check_paths("medusa_weights", *(() if self.draft_vocab in DRAFT_WORDS else ("draft_vocab",)))


@dataclass
class GenerationSettings:
    max_new_tokens: int = field(default=128, metadata=_help("new tokens per reply (at most; EOS ends earlier)"))
    greedy: bool = field(default=False, metadata=_help(
        "argmax decoding, lossless with Medusa (the default; the same as --temperature 0)"))
    temperature: float = field(default=0.0, metadata=_help("sampling temperature; 0 = greedy"))
    top_p: float = field(default=1.0, metadata=_help("nucleus sampling mass, in (0, 1]"))
    sampling_mode: str = field(default="sample", metadata=_help(
        "how Medusa accepts drafts when sampling: sample (speculative sampling, distributed exactly "
        "as plain sampling) or typical (Medusa's typical acceptance: faster, not exact)",
        choices=SAMPLING_MODES))
    posterior_threshold: float = field(default=0.09, metadata=_help("typical acceptance: epsilon"))
    posterior_alpha: float = field(default=0.3, metadata=_help("typical acceptance: delta"))
    medusa_choices: str = field(default="auto", metadata=_help(
        "the Medusa tree: auto (the tree `python -m medusa tune` saved beside the heads for this device, "
        "else 8_node on a CPU and mc_sim_7b_63 on a GPU), a preset (chain, 8_node, 8_node_2, 16_node, "
        "mc_sim_7b_63) or a JSON file of paths"))
    seed: int = field(default=0, metadata=_help("seed of every random choice"))
    vocab_check: int = field(default=32, metadata=_help(
        "greedy on a reduced-vocabulary model sliced from a tied one: check every N tokens against the "
        "full vocabulary and redo from the first wrong one, so the output is the full model's (0 = off)"))

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature:g}")
        if self.greedy and self.temperature > 0:
            raise UsageError(f"--greedy and --temperature {self.temperature:g} exclude each other: pick one")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top_p must be in (0, 1] (1 = no nucleus filter), got {self.top_p:g}")
        if self.posterior_threshold < 0 or self.posterior_alpha < 0:
            raise UsageError("--posterior_threshold and --posterior_alpha must be >= 0")
        if not 0 <= self.seed < 2 ** 32:
            raise UsageError(f"--seed must be in [0, 2^32), got {self.seed}")
        if self.vocab_check < 0:
            raise UsageError(f"--vocab_check must be >= 0 (0 = off), got {self.vocab_check}")
        check_spec(self.medusa_choices)      # preset name, file and paths now; depth once heads are known
        self.greedy = self.temperature == 0

    @property
    def mode_name(self) -> str:
        return "greedy" if self.greedy else f"{self.sampling_mode}_t{self.temperature:g}"

    def sampling(self, seed=None):
        """The Sampling both plain and Medusa decoding receive (seed: this reply's own)."""
        if self.greedy:
            return Sampling("greedy", seed=self.seed if seed is None else seed, vocab_check=self.vocab_check)
        return Sampling(self.sampling_mode, temperature=self.temperature, top_p=self.top_p,
                        posterior_threshold=self.posterior_threshold, posterior_alpha=self.posterior_alpha,
                        seed=self.seed if seed is None else seed, vocab_check=self.vocab_check)
