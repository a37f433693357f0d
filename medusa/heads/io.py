"""Draft-head weights on disk: our `.jtr` files and FasterDecoding's released Medusa heads.

Our format: `heads.jtr` is a pickled {parameter name: fp32 numpy array} (the names of
`DraftHeads.named_parameters()`), and `heads_config.json` beside it (the .jtr's stem +
`_config.json`, so several head files and a base model's own config.json can share a folder)
holds `HeadConfig.to_dict()`. Loading rebuilds the heads from that config and requires exactly
their names and shapes: anything missing, unexpected or mis-shaped is a ValueError naming the
file and the tensor. Nothing loads partially.

Layout: in memory every head Linear stores W as [in, out] (heads.py: y = x @ W, the fast
Jittor matmul); on disk Linear weights keep torch's / FasterDecoding's [out, in], so a .jtr's
tensors are a torch state dict of the same module. `save_heads` and `load_state` transpose
(the names are found from the heads' Linear modules, see `weights.transposed_names`); shapes in
error messages are the on-disk [out, in] ones.

FasterDecoding/Medusa saves `medusa_lm_head.pt` / `.safetensors` from
`ModuleList([Sequential(ResBlock * num_layers, Linear(H, V, bias=False))] * num_heads)`:

    {i}.{j}.linear.weight / .bias   ResBlock j of head i      -> blocks.{i}.{j}.linear.*
    {i}.{num_layers}.weight         vocab projection of head i -> lm_heads.{i}.weight

Files without the projection keys use the base lm_head (share_lm_head=True). The head and layer
counts come from the keys: the config.json files released beside them are known to be wrong.
"""
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from medusa.heads.families import HeadConfig, build_heads
from medusa.model.config import format_gib, memory_limit
from medusa.model.weights import check_finite, check_state, transposed_names
from medusa.runtime.backend import jt
from medusa.runtime.errors import MissingFileError, UsageError
from medusa.runtime.files import PACKAGE_DIR, atomic_write, load_tensors, tensor_bytes

CONFIG_SUFFIX = "_config.json"
DEFAULT_HEADS = PACKAGE_DIR / "trained" / "smollm2_medusa.jtr"   # for the embedded default model
FASTERDECODING_NAMES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")


def config_path(path) -> Path:
    """`dir/heads.jtr` -> `dir/heads_config.json`."""
    path = Path(path)
    return path.with_name(path.stem + CONFIG_SUFFIX)


STORE_DTYPES = ("float32", "float16")


def _to_disk(heads, dtype="float32") -> dict:
    """{name: array} in the on-disk (torch) layout."""
    transposed = transposed_names(heads)
    return {name: np.ascontiguousarray(p.numpy().T if name in transposed else p.numpy(), dtype=dtype)
            for name, p in heads.named_parameters()}


def save_heads(heads, path, dtype="float32") -> Path:
    """Write the heads' parameters to `path` (.jtr, Linear weights as [out, in]) and their
    HeadConfig beside it. dtype="float16" halves the file; loading computes in fp32 either way
    (fp16's 11-bit mantissa moves a weight by at most 2^-11 of itself)."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"heads are stored as {' or '.join(STORE_DTYPES)}, not {dtype}")
    path = Path(path)
    atomic_write(path, tensor_bytes(_to_disk(heads, dtype), path.suffix))
    atomic_write(config_path(path), json.dumps(heads.config.to_dict(), indent=2).encode())
    return path


def read_config(path) -> HeadConfig:
    """The HeadConfig saved beside heads file `path`, without reading the weights."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"heads file {path} does not exist")
    cfg_file = config_path(path)
    if not cfg_file.is_file():
        raise MissingFileError(f"{path}: no head config {cfg_file.name} beside it (save_heads writes one)")
    try:
        cfg = HeadConfig.from_dict(json.loads(cfg_file.read_text(encoding="utf-8")))
    except (ValueError, TypeError, AttributeError, RecursionError) as e:   # JSON and UTF-8 errors are ValueErrors
        raise UsageError(f"{cfg_file}: bad head config: {e}") from e
    _check_types(cfg, cfg_file)
    check_memory(cfg, cfg_file)
    return cfg


def _check_types(cfg: HeadConfig, source):
    """Every HeadConfig field has the type of its default (an int is not a bool, a str, a float)."""
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), type(f.default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{source}: {f.name} must be {kind.__name__}, got {value!r:.60}: fix the head config")


def check_memory(cfg: HeadConfig, source):
    """Refuse a head config whose fp32 weights could not fit in memory, before any is built: a
    lower bound on every family's size (num_layers H x H blocks per head, plus its own H x V
    projection unless share_lm_head)."""
    per_head = int(cfg.num_layers) * int(cfg.hidden_size) ** 2 + \
        (0 if cfg.share_lm_head else int(cfg.hidden_size) * int(cfg.vocab_size))
    need, limit = 4 * int(cfg.num_heads) * per_head, memory_limit()
    if need > limit:
        raise UsageError(f"{source}: num_heads={cfg.num_heads}, num_layers={cfg.num_layers}, hidden_size={cfg.hidden_size}"
                         f" and vocab_size={cfg.vocab_size} imply at least {format_gib(need)} of head weights; this machine "
                         f"has {format_gib(limit)} of memory: check those fields")


def check_fits(cfg: HeadConfig, base, source):
    """Heads trained for another hidden size or vocabulary cannot draft for this base
    (base: its ModelConfig): a UsageError naming the file and both sizes."""
    if (cfg.hidden_size, cfg.vocab_size) != (base.hidden_size, base.output_size):
        raise UsageError(f"{source}: heads for hidden size {cfg.hidden_size} and vocabulary {cfg.vocab_size}, "
                         f"the base model has {base.hidden_size} and {base.output_size}: use heads trained "
                         "for this base model")
    if cfg.vocab != base.vocab_id:
        found = f"reduced vocabulary {cfg.vocab}" if cfg.vocab else "the full vocabulary"
        want = f"reduced vocabulary {base.vocab_id}" if base.vocab_id else "the full vocabulary"
        raise UsageError(f"{source}: heads trained for {found}, the base model has {want}: use heads trained "
                         "for this base model")


def load_heads(path):
    """Rebuild the DraftHeads saved at `path` from its config, loading every tensor strictly."""
    path = Path(path)
    cfg = read_config(path)
    tensors = load_tensors(path, "head weights")
    heads = build_heads(cfg)
    load_state(heads, tensors, source=path)
    return heads


def start_from(heads, path):
    """Copy the heads saved at `path` into `heads` (fine-tuning from them): their configs must
    agree on everything but the prefix layer (HeadConfig.prefix_layer and its sizes), and the
    file must hold every other parameter with its shape (load_state's strict check). A prefix
    layer the file lacks keeps its init."""
    path = Path(path)
    saved = read_config(path).to_dict()
    want = heads.config.to_dict()
    prefix_keys = {"prefix_layer", "prefix_heads", "prefix_intermediate"}
    differ = sorted(k for k in want if k not in prefix_keys and saved.get(k) != want[k])
    if differ:
        raise UsageError(f"{path}: its heads differ from the ones to train in {', '.join(differ)} "
                         f"({', '.join(f'{k}={saved.get(k)!r} vs {want[k]!r}' for k in differ)}): "
                         "pass the same head flags as the saved config")
    return load_state(heads, load_tensors(path, "head weights"), path, may_lack=("prefix.",))


def _head_count(names):
    """Heads present in `names`: per-head parameters are `<list>.{k}.…` (see heads.py)."""
    ks = {int(n.split(".")[1]) for n in names if len(n.split(".")) > 2 and n.split(".")[1].isdigit()}
    return max(ks) + 1 if ks else None


def load_state(heads, tensors: dict, source, may_lack=()):
    """Assign `tensors` (on-disk layout: Linear weights [out, in]) to `heads`, requiring exactly
    their parameter names and shapes; Linear weights are transposed to [in, out] on the way in.
    Parameters whose names start with one of `may_lack` may be absent: they keep their values."""
    transposed = transposed_names(heads)
    params = {name: p for name, p in heads.named_parameters() if name in tensors or not name.startswith(may_lack)}
    disk_shape = {name: tuple(p.shape)[::-1] if name in transposed else tuple(p.shape)
                  for name, p in params.items()}
    found_k, want_k = _head_count(tensors), heads.config.num_heads
    if found_k is not None and _head_count(params) is not None and found_k != want_k:
        raise UsageError(f"{source}: holds weights for {found_k} heads, the config has num_heads={want_k}")
    check_state(disk_shape, tensors, source, f"{heads.config.family} heads")
    check_finite({name: tensors[name] for name in params}, source)
    for name, p in params.items():
        value = np.asarray(tensors[name], dtype=np.float32)
        p.assign(jt.array(np.ascontiguousarray(value.T if name in transposed else value)))
    return heads


# ---------------------------------------------------------------- FasterDecoding Medusa heads
_RESBLOCK_KEY = re.compile(r"^(\d+)\.(\d+)\.linear\.(weight|bias)$")
_VOCAB_KEY = re.compile(r"^(\d+)\.(\d+)\.weight$")


def _read_torch_tensors(path: Path) -> dict:
    import torch  # lazily: only FasterDecoding imports need torch
    from safetensors.torch import load_file  # handles bf16, which numpy cannot hold

    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise UsageError(f"cannot read Medusa heads {path}: {e}") from e
    if not isinstance(state, dict):
        raise UsageError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("medusa_head."): v.float().numpy() for k, v in state.items()}


def _medusa_layout(tensors: dict, source):
    """(num_heads, num_layers, has_vocab_projection) read from the key names alone."""
    layers, vocab = {}, {}
    for key in tensors:
        if m := _RESBLOCK_KEY.match(key):
            layers.setdefault(int(m[1]), set()).add(int(m[2]))
        elif m := _VOCAB_KEY.match(key):
            vocab[int(m[1])] = int(m[2])
        else:
            raise UsageError(f"{source}: unexpected tensor {key} for FasterDecoding Medusa heads")
    heads = sorted(set(layers) | set(vocab))
    if not heads:
        raise UsageError(f"{source}: no Medusa head tensors found")
    if heads != list(range(len(heads))):
        raise UsageError(f"{source}: head indices {heads} are not 0..{len(heads) - 1}")
    num_layers = len(layers.get(0, ()))
    for i in heads:
        if layers.get(i, set()) != set(range(num_layers)):
            raise UsageError(f"{source}: head {i} has ResBlocks {sorted(layers.get(i, ()))}, "
                             f"head 0 has {list(range(num_layers))}")
    if vocab and (set(vocab) != set(heads) or set(vocab.values()) != {num_layers}):
        raise UsageError(f"{source}: vocab projections {sorted(vocab.items())} do not match "
                         f"{len(heads)} heads of {num_layers} ResBlocks")
    return len(heads), num_layers, bool(vocab)


def import_fasterdecoding_heads(src, base_lm_head_t=None):
    """Medusa heads from a FasterDecoding `medusa_lm_head.pt` / `.safetensors` (or its folder).

    `base_lm_head_t` [H, V] (`model.lm_head_t()`) is required for files without a vocab
    projection (they become share_lm_head=True heads) and, when given, must match the file's
    sizes. The file's tensors are torch [out, in], i.e. already our on-disk layout.
    """
    path = Path(src)
    if path.is_dir():
        found = [path / n for n in FASTERDECODING_NAMES if (path / n).is_file()]
        if not found:
            raise MissingFileError(f"{path}: none of {list(FASTERDECODING_NAMES)}")
        path = found[0]
    if not path.is_file():
        raise MissingFileError(f"Medusa heads {path} do not exist")
    tensors = _read_torch_tensors(path)
    num_heads, num_layers, own_vocab = _medusa_layout(tensors, path)
    if num_layers:
        hidden = tensors["0.0.linear.weight"].shape[1]
    else:
        hidden = tensors["0.0.weight"].shape[1]
    base = None if base_lm_head_t is None else tuple(base_lm_head_t.shape)
    if own_vocab:
        vocab = tensors[f"0.{num_layers}.weight"].shape[0]
    elif base is None:
        raise UsageError(f"{path}: heads without a vocab projection need base_lm_head_t [H, V]")
    else:
        vocab = base[1]
    if base is not None and base != (hidden, vocab):
        raise UsageError(f"{path}: base_lm_head_t has shape {base}, the heads expect {(hidden, vocab)} ([H, V])")
    cfg = HeadConfig(family="medusa", num_heads=num_heads, num_layers=num_layers, hidden_size=hidden,
                     vocab_size=vocab, share_lm_head=not own_vocab)
    renamed = {}
    for key, value in tensors.items():
        if m := _RESBLOCK_KEY.match(key):
            renamed[f"blocks.{m[1]}.{m[2]}.linear.{m[3]}"] = value
        else:
            renamed[f"lm_heads.{key.split('.')[0]}.weight"] = value
    return load_state(build_heads(cfg), renamed, source=path)
