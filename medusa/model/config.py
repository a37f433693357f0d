"""Base-model configuration, read from a Hugging Face `config.json`.

Llama, Qwen2 and Qwen3 differ in a handful of flags (see transformers' modular Qwen2/Qwen3):
Qwen2 adds a bias to q/k/v, Qwen3 adds RMSNorm on q and k per head and takes head_dim from the
config. Everything else (GQA, tied embeddings, RoPE base and Llama-3 scaling) is shared.
"""
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from medusa.runtime.errors import UsageError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
MAX_POSITIONS = 2 ** 31 - 1     # positions are int32 on the device
BYTES_PER_PARAMETER = 2         # fp16, the smallest dtype a model is held in: a config that cannot
                                # fit at 2 bytes a parameter cannot load at all


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None      # Llama-3 style {"rope_type": "llama3", ...} or None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False             # q/k/v projections have a bias (Qwen2; Llama/Qwen3 flag)
    o_bias: bool = False                     # o_proj has a bias (Llama/Qwen3 `attention_bias`, never Qwen2)
    qk_norm: bool = False                    # Qwen3: RMSNorm over head_dim on q and k
    bos_token_id: Optional[int] = None
    eos_token_id: list = field(default_factory=list)
    # a reduced output vocabulary (medusa/vocab/reduce.py): the original ids the lm_head rows stand for,
    # ascending; the embedding keeps all vocab_size rows unless embedding_sliced
    kept_ids: Optional[list] = None
    embedding_sliced: bool = False
    # the embedding rows are the full lm_head (sliced from a tied model, embedding whole): greedy
    # decoding can then check its tokens against the full vocabulary (Sampling.vocab_check)
    embedding_is_full_head: bool = False
    # Mistral's sliding-window attention span; decoding computes full attention, so a request
    # longer than this is refused (core.check_request) rather than computed differently
    sliding_window: Optional[int] = None

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def output_size(self) -> int:
        """Rows of the lm_head: the logits' last dimension."""
        return len(self.kept_ids) if self.kept_ids is not None else self.vocab_size

    @property
    def embedding_rows(self) -> int:
        return len(self.kept_ids) if self.embedding_sliced else self.vocab_size

    @property
    def vocab_id(self) -> str:
        """"" for the full vocabulary, else a digest of the kept ids: heads record which
        vocabulary they were trained for (head_io.check_fits)."""
        if self.kept_ids is None:
            return ""
        import hashlib

        return hashlib.sha1(",".join(map(str, self.kept_ids)).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict, source="config") -> "ModelConfig":
        """The config of a Hugging Face config.json dict, every field the model uses checked for
        type and range, and its size against this machine's memory, before anything is built
        (`source`, the file it came from, is named in the error)."""
        if not isinstance(d, dict):
            raise UsageError(f"{source}: expected a JSON object of model settings, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UsageError(f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        missing = [k for k in REQUIRED_SIZES if k not in d]
        if missing:
            raise UsageError(f"{source}: config is missing required keys: {missing}")
        sizes = {k: _size(d, k, source) for k in (*REQUIRED_SIZES, *OPTIONAL_SIZES)}
        heads, hidden = sizes["num_attention_heads"], sizes["hidden_size"]
        if sizes["head_dim"] is None and hidden % heads:
            raise UsageError(f"{source}: num_attention_heads={heads} does not divide hidden_size={hidden} "
                             "(and there is no head_dim): fix one of them in config.json")
        head_dim = sizes["head_dim"] or hidden // heads
        if head_dim % 2:
            raise UsageError(f"{source}: head_dim={head_dim} is odd; RoPE rotates pairs of dimensions")
        kv_heads = sizes["num_key_value_heads"] or heads
        if heads % kv_heads:
            raise UsageError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
        flags = {k: _flag(d, k, source) for k in ("tie_word_embeddings", "attention_bias", "mlp_bias",
                                                  "use_sliding_window")}
        if flags["mlp_bias"]:
            raise UsageError(f"{source}: mlp_bias=True is not supported")
        cfg = cls(
            model_type=model_type,
            vocab_size=sizes["vocab_size"],
            hidden_size=hidden,
            intermediate_size=sizes["intermediate_size"],
            num_hidden_layers=sizes["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=_positive_real(d, "rms_norm_eps", 1e-6, source),
            rope_theta=_rope_theta(d, source),
            rope_scaling=_rope_scaling(d, source),
            max_position_embeddings=sizes["max_position_embeddings"] or 2048,
            tie_word_embeddings=flags["tie_word_embeddings"],
            # Qwen2 always has q/k/v bias; Llama has a config flag for it
            attention_bias=model_type == "qwen2" or flags["attention_bias"],
            o_bias=model_type != "qwen2" and flags["attention_bias"],
            qk_norm=model_type == "qwen3",
            bos_token_id=_token_ids(d, "bos_token_id", source)[0] if d.get("bos_token_id") is not None else None,
            eos_token_id=_token_ids(d, "eos_token_id", source),
            # Mistral always slides its window; Qwen2/Qwen3 only with use_sliding_window
            sliding_window=sizes["sliding_window"] if model_type == "mistral" or flags["use_sliding_window"] else None,
            **_reduced_vocab(d, sizes["vocab_size"], source),
        )
        check_memory(cfg, source)
        return cfg

    @classmethod
    def from_json(cls, path) -> "ModelConfig":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
            raise UsageError(f"cannot read model config {path}: {type(e).__name__}: {e}") from e
        return cls.from_dict(d, path)

    @property
    def parameter_count(self) -> int:
        """Parameters of the model this config builds (embedding, layers, final norm, lm_head)."""
        return self.embedding_rows * self.hidden_size + self.num_hidden_layers * self.layer_parameters + \
            self.hidden_size + (self.output_size * self.hidden_size if self.has_own_head else 0)

    @property
    def has_own_head(self) -> bool:
        return not self.tie_word_embeddings or self.kept_ids is not None   # a sliced head is its own

    @property
    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: attention, MLP, their norms (biases included)."""
        q, kv, h = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim, self.hidden_size
        attention = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.attention_bias else 0) + (h if self.o_bias else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h + (2 * self.head_dim if self.qk_norm else 0)

    def to_dict(self) -> dict:
        return asdict(self)


REDUCED_VOCAB_KEY = "medusa_reduced_vocab"   # written into config.json by `medusa.vocab.reduce slice`


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)    # numpy ints too


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _size(d, key, source):
    """A positive integer field (None when an optional one is absent or null)."""
    v = d.get(key)
    if v is None and key in OPTIONAL_SIZES:
        return None
    if not _is_int(v) or v < 1:
        raise UsageError(f"{source}: {key} must be a positive integer, got {v!r}: fix it in config.json")
    if key == "max_position_embeddings" and v > MAX_POSITIONS:
        raise UsageError(f"{source}: max_position_embeddings={v} exceeds {MAX_POSITIONS} (positions are int32)")
    return int(v)


def _flag(d, key, source) -> bool:
    v = d.get(key)
    if v is not None and not isinstance(v, bool):
        raise UsageError(f"{source}: {key} must be true or false, got {v!r}: fix it in config.json")
    return bool(v)


def _positive_real(d, key, default, source, where=""):
    v = d.get(key)
    if v is None:
        return default
    if not _is_real(v) or v <= 0:
        raise UsageError(f"{source}: {where}{key} must be a finite number > 0, got {v!r}: fix it in config.json")
    return float(v)


def _token_ids(d, key, source) -> list:
    """An id or a list of ids, each a non-negative integer ([] when absent)."""
    v = d.get(key)
    ids = [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]
    if not all(_is_int(i) and i >= 0 for i in ids):
        raise UsageError(f"{source}: {key} must be a token id or a list of them (integers >= 0), got {v!r:.80}")
    return [int(i) for i in ids]


def memory_limit() -> int:
    """Bytes a process may hold here: physical memory, or the address-space ulimit if lower."""
    import resource

    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return min(limit, soft) if soft != resource.RLIM_INFINITY else limit


def check_memory(cfg: "ModelConfig", source="config"):
    """Refuse a config whose weights alone (BYTES_PER_PARAMETER each) exceed memory_limit(),
    naming the fields that make it that large."""
    params, limit = cfg.parameter_count, memory_limit()
    if params * BYTES_PER_PARAMETER <= limit:
        return
    layers = cfg.num_hidden_layers * cfg.layer_parameters
    biggest = (f"num_hidden_layers={cfg.num_hidden_layers} x {cfg.layer_parameters:,} per layer "
               f"(hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size})" if layers * 2 >= params
               else f"vocab_size={cfg.vocab_size} x hidden_size={cfg.hidden_size}")
    raise UsageError(f"{source}: the config implies {params:.3g} parameters, {format_gib(params * BYTES_PER_PARAMETER)} "
                     f"at {BYTES_PER_PARAMETER} bytes each, mostly {biggest}; this machine has {format_gib(limit)} of memory: "
                     "check those fields in config.json")


def format_gib(n) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def _reduced_vocab(d: dict, vocab_size: int, source) -> dict:
    r = d.get(REDUCED_VOCAB_KEY)
    if not r:
        return {}
    kept = r.get("kept_ids") if isinstance(r, dict) else None
    if not isinstance(kept, list) or not kept or not all(_is_int(i) for i in kept) or \
            kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= vocab_size:
        raise UsageError(f"{source}: {REDUCED_VOCAB_KEY}.kept_ids must be distinct ascending ids in [0, {vocab_size})")
    sliced = bool(r.get("embedding_sliced", False))
    return {"kept_ids": [int(i) for i in kept], "embedding_sliced": sliced,
            "embedding_is_full_head": bool(r.get("embedding_is_full_head", False)) and not sliced}


def _rope_params(d: dict, source) -> dict:
    params = d.get("rope_parameters") or {}   # transformers >= 5 moves rope settings here
    if not isinstance(params, dict):
        raise UsageError(f"{source}: rope_parameters must be an object, got {params!r:.80}")
    return params


def _rope_theta(d: dict, source) -> float:
    if d.get("rope_theta") is not None:
        return _positive_real(d, "rope_theta", 10000.0, source)
    return _positive_real(_rope_params(d, source), "rope_theta", 10000.0, source, "rope_parameters.")


def _rope_scaling(d: dict, source) -> Optional[dict]:
    scaling = d.get("rope_scaling") or _rope_params(d, source)
    if not scaling:
        return None
    if not isinstance(scaling, dict):
        raise UsageError(f"{source}: rope_scaling must be an object or null, got {scaling!r:.80}")
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise UsageError(f"{source}: unsupported rope_scaling type {kind!r} (supported: llama3)")
    what = "rope_scaling."
    if scaling.get("factor") is None:
        raise UsageError(f"{source}: rope_scaling of type llama3 needs a factor")
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        _positive_real(scaling, key, None, source, what)
    if scaling.get("high_freq_factor", 4.0) <= scaling.get("low_freq_factor", 1.0):
        raise UsageError(f"{source}: rope_scaling.high_freq_factor must exceed low_freq_factor")
    return dict(scaling)


def rope_inv_freq(cfg: ModelConfig):
    """Inverse RoPE frequencies [head_dim/2] as a list of floats, with Llama-3 scaling applied."""
    dim = cfg.head_dim
    inv = [1.0 / (cfg.rope_theta ** (2 * i / dim)) for i in range(dim // 2)]
    s = cfg.rope_scaling
    if not s:
        return inv
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / factor)
        else:  # smooth interpolation between the two regimes
            smooth = (old_len / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out
