"""Resolving and loading what a command decodes with, checked before anything heavy loads.

    plan = loading.plan(model_args, settings, heads="required")   # resolved and checked, nothing heavy loaded
    setup = loading.load(plan)                                     # the model (and heads)

Order of work in every command: parse and validate the flags (settings.py's dataclasses), check
what can be checked without the model (heads config vs tree depth, heads vs base config, data
files, output paths, prompt lengths), then load.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from medusa.decoding.core import GenerationError, check_request
from medusa.decoding.retrieval import DEVICE_DEFAULTS, MergedDraft, RetrievalConfig, RetrievalDrafter
from medusa.decoding.tree import AUTO, load_choices, resolve_auto
from medusa.heads import io as head_io
from medusa.heads.draft_vocab import DRAFT_FILE, DraftVocab
from medusa.model import weights
from medusa.model.tokenizer import ChatTokenizer
from medusa.model.weights import DEFAULT_MODEL_NAME
from medusa.runtime.backend import default_compute_dtype, use_device
from medusa.runtime.errors import MissingFileError, UsageError


def check_writable(path, flag):
    """An output file can be created at `path` (its folder exists or can be made, and is writable)."""
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot write into {folder}")
    if Path(path).is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name")


def check_prompt_fits(plan, prompt_ids, max_new_tokens, where="the prompt"):
    """The prompt fits the context, and (sliced embedding) every token is in the vocabulary."""
    try:
        check_request(plan.config, len(prompt_ids), max_new_tokens)
    except GenerationError as e:
        raise GenerationError(f"{where}: {e}") from None
    cfg = plan.config
    if cfg.embedding_sliced:
        kept = set(cfg.kept_ids)
        bad = [t for t in prompt_ids if t not in kept]
        if bad:
            raise GenerationError(f"{where}: token {bad[0]} ({plan.tokenizer.decode([bad[0]])!r}) is outside this "
                                  f"model's reduced vocabulary of {len(kept)} tokens (its embedding is sliced): use "
                                  "the full model, or a vocabulary built from data like this prompt")


# ---------------------------------------------------------------- resolving and loading
@dataclass
class Plan:
    """Everything a command will load, resolved and checked; only the tokenizer is loaded."""
    source: Path              # weights: HF folder or converted .pkl
    config: object            # ModelConfig of the base
    tokenizer: object
    eos_ids: tuple
    device: str
    dtype: str
    model_name: str
    heads_path: Path = None   # None: no Medusa
    head_config: object = None
    choices: list = None      # the tree's validated paths, when heads are used
    tree_spec: str = None     # the preset or file they came from (`auto` resolved)
    draft_vocab: object = None  # draft_vocab.DraftVocab the heads draft from (--draft_vocab), None = all tokens
    retrieval: object = None  # retrieval.RetrievalConfig with --draft retrieval (no heads then)

    @property
    def tree_name(self) -> str:
        return Path(self.tree_spec).stem if self.tree_spec else "none"

    def resolved(self) -> dict:
        """What a results file records about the model side."""
        out = {"model": str(self.source), "model_name": self.model_name, "device": self.device, "dtype": self.dtype}
        if self.heads_path is not None:
            out.update(medusa_weights=str(self.heads_path), head_config=self.head_config.to_dict(),
                       tree_spec=self.tree_spec, tree=self.choices)
        if self.draft_vocab is not None:
            out.update(draft_vocab=str(self.draft_vocab.path), draft_vocab_size=len(self.draft_vocab))
        if self.retrieval is not None:
            out.update(draft="heads+retrieval" if self.heads_path else "retrieval", retrieval=self.retrieval.to_dict(),
                       tree_spec=self.tree_spec)
        return out


@dataclass
class Setup:
    """What a command decodes with."""
    model: object
    tokenizer: object
    eos_ids: tuple
    heads: object             # None without Medusa
    choices: list
    plan: Plan


def resolve_heads(margs, heads):
    """The heads file of the flags. heads: "required", "optional" (only when --medusa_weights is
    given) or "none"."""
    if heads == "none" or (heads == "optional" and not margs.medusa_weights):
        return None
    if margs.medusa_weights:
        return Path(margs.medusa_weights)
    if not margs.is_default_model:
        raise UsageError("a base model other than the embedded default needs --medusa_weights "
                         "(heads trained for it), or run without Medusa")
    if not head_io.DEFAULT_HEADS.is_file():
        raise MissingFileError(f"the shipped heads {head_io.DEFAULT_HEADS} are missing: reinstall, or pass --medusa_weights")
    return head_io.DEFAULT_HEADS


def resolve_draft(margs, heads_path, head_config, device):
    """The DraftVocab of --draft_vocab (heads/draft_vocab.py), None for the whole vocabulary. `auto` takes
    DRAFT_FILE from the heads' folder on a CPU, for heads that share the base lm_head."""
    spec = margs.draft_vocab
    if spec in ("none", ""):
        return None
    shared = head_config is not None and head_config.share_lm_head and not head_config.vocab
    if spec == "auto":
        path = heads_path.parent / DRAFT_FILE if shared else None
        return DraftVocab.load(path) if device == "cpu" and path is not None and path.is_file() else None
    if head_config is None:
        raise UsageError(f"--draft_vocab {spec}: only heads draft; give --medusa_weights or drop --draft_vocab")
    if not shared:
        raise UsageError(f"--draft_vocab {spec}: needs heads that share the base lm_head; "
                         f"{heads_path} has its own vocab projections")
    return DraftVocab.load(spec)


def plan(margs, settings=None, heads="optional") -> Plan:
    """Resolve and check the model flags before anything heavy loads: the heads' config, the
    tree against their depth, the base config against the heads' sizes, the tokenizer. The
    embedded default (or a .gguf) is converted here on first use."""
    device = use_device(margs.device)
    dtype = margs.dtype or default_compute_dtype()
    source_flag = getattr(margs, "draft", "heads")
    retrieval = None
    if source_flag != "heads" and heads != "none":
        chosen = DEVICE_DEFAULTS[device]
        nodes = getattr(margs, "retrieval_nodes", 0)
        retrieval = RetrievalConfig(**{**chosen, **({"max_nodes": nodes} if nodes else {})})
    alone = source_flag == "retrieval"
    heads_path = None if retrieval is not None and alone else resolve_heads(margs, "required" if retrieval else heads)
    head_config = choices = tree_spec = None
    if retrieval is not None and alone:
        tree_spec = "retrieval"          # a tree of its own every step
    if heads_path is not None:
        head_config = head_io.read_config(heads_path)
        tree_spec = settings.medusa_choices if settings else "chain"
        if tree_spec == AUTO:
            tree_spec = resolve_auto(heads_path, device)
        choices = load_choices(tree_spec, head_config.num_heads, vocab_size=head_config.vocab_size)
        if retrieval is not None:        # the heads' tree, the retrieved continuations merged in every step
            tree_spec = f"{tree_spec}+retrieval"
    source, tok_dir = weights.resolve_model(margs.base_model_path or None, margs.jittor_base_weights or None, dtype)
    config = weights.read_config(source)
    if head_config is not None:
        head_io.check_fits(head_config, config, heads_path)
    draft = resolve_draft(margs, heads_path, head_config, device)
    if draft is not None:
        draft.check(config.vocab_size)
    tokenizer = ChatTokenizer.from_folder(tok_dir)   # no transformers on the inference path
    return Plan(source, config, tokenizer, eos_ids_of(config, tokenizer), device, dtype,
                model_name(margs, source), heads_path, head_config, choices, tree_spec, draft, retrieval)


def load(plan: Plan) -> Setup:
    """Load the planned model (and heads)."""
    model = weights.load_model(plan.source, plan.dtype)
    heads = head_io.load_heads(plan.heads_path) if plan.heads_path is not None else None
    if heads is not None:
        heads.propose_from(plan.draft_vocab)
    if plan.retrieval is not None:
        drafter = RetrievalDrafter(plan.retrieval)
        heads = drafter if heads is None else MergedDraft(heads, drafter)
    return Setup(model, plan.tokenizer, plan.eos_ids, heads, plan.choices, plan)


def eos_ids_of(config, tokenizer) -> tuple:
    """The model config's EOS ids plus the tokenizer's."""
    ids = set(config.eos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


def model_name(margs, source) -> str:
    if margs.is_default_model:
        return DEFAULT_MODEL_NAME
    source = Path(source)
    return source.parent.name if source.suffix == ".pkl" else source.name
