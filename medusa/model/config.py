"""Base-model configuration, read from a Hugging Face `config.json`.

Llama, Qwen2 and Qwen3 differ in a handful of flags (see transformers' modular Qwen2/Qwen3):
Qwen2 adds a bias to q/k/v, Qwen3 adds RMSNorm on q and k per head and takes head_dim from the
config. Everything else (GQA, tied embeddings, RoPE base and Llama-3 scaling) is shared.
"""
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from medusa.runtime.errors import UsageError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


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
    def from_dict(cls, d: dict) -> "ModelConfig":
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UsageError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in d]
        if missing:
            raise UsageError(f"config is missing required keys: {missing}")
        heads = d["num_attention_heads"]
        eos = d.get("eos_token_id")
        eos = [] if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])
        cfg = cls(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(d),
            rope_scaling=_rope_scaling(d),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v bias; Llama has a config flag for it
            attention_bias=model_type == "qwen2" or bool(d.get("attention_bias", False)),
            o_bias=model_type != "qwen2" and bool(d.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos,
            **_reduced_vocab(d),
        )
        if d.get("mlp_bias"):
            raise UsageError("mlp_bias=True is not supported")
        if heads % cfg.num_key_value_heads:
            raise UsageError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={cfg.num_key_value_heads}")
        return cfg

    @classmethod
    def from_json(cls, path) -> "ModelConfig":
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"cannot read model config {path}: {e}") from e
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)


REDUCED_VOCAB_KEY = "medusa_reduced_vocab"   # written into config.json by `medusa.vocab.reduce slice`


def _reduced_vocab(d: dict) -> dict:
    r = d.get(REDUCED_VOCAB_KEY)
    if not r:
        return {}
    kept = [int(i) for i in r["kept_ids"]]
    if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= d["vocab_size"]:
        raise UsageError(f"{REDUCED_VOCAB_KEY}.kept_ids must be distinct ascending ids in [0, {d['vocab_size']})")
    sliced = bool(r.get("embedding_sliced", False))
    return {"kept_ids": kept, "embedding_sliced": sliced,
            "embedding_is_full_head": bool(r.get("embedding_is_full_head", False)) and not sliced}


def _rope_theta(d: dict) -> float:
    params = d.get("rope_parameters") or {}   # transformers >= 5 moves rope settings here
    return float(d.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _rope_scaling(d: dict) -> Optional[dict]:
    scaling = d.get("rope_scaling") or d.get("rope_parameters")
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise UsageError(f"unsupported rope_scaling type {kind!r} (supported: llama3)")
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
