"""The frozen base model's hidden states for head training, per batch or cached once on disk.

Heads read the base's final-normed hidden states [T, H]; the base never trains, so its states
for a fixed data set can be computed once and reused every epoch (the trainer's offline mode).
The cache is one folder per (data file content, model, max_length, template, dtype) key:

    hidden.npy   [sum T_i, H] fp16   the states of every sample, concatenated; memory-mapped
    index.npz    lengths [n] int64 (T_i), ids [sum T_i] int32 (the token ids, checked on load)

fp16 halves the disk (H = 576: ~1.1 KB per token, 2.5 GB for 2.2M tokens). The states are
written into a memory-mapped file batch by batch and read back memory-mapped, so neither
building nor training holds them in RAM: a batch reads only its own rows. Heads compute in fp32.
hidden.npy is written under a temporary name and renamed when complete, index.npz after it, so
a killed build leaves no cache that looks finished.
Under MPI only rank 0 builds and writes it while the others wait at a barrier, then every rank
maps the same file.
"""
import hashlib
import os
from pathlib import Path

import numpy as np

from medusa.data.samples import collate, read_npz
from medusa.decoding.core import check_ids, hidden_states
from medusa.model.weights import content_id
from medusa.runtime.backend import jt
from medusa.runtime.errors import UsageError


class CacheError(UsageError):
    """A hidden-state cache folder that is damaged or belongs to other data: delete it to rebuild."""


def base_hidden(model, samples, pad_id):
    """Final-normed hidden states [B, T, H] of right-padded samples (no gradient)."""
    batch = collate(samples, pad_id)
    return hidden_states(model, batch["input_ids"], batch["attention_mask"])


def cache_key(data_path, model_src, max_length, template, dtype):
    """Key of the cached states: the data file's bytes, the weights' content identity
    (weights_identity), and the settings that change the states."""
    h = hashlib.sha1(Path(data_path).read_bytes())
    h.update(f"|{weights_identity(model_src)}|{max_length}|{template}|{dtype}".encode())
    return h.hexdigest()[:16]


def weights_identity(src) -> str:
    """What identifies a model's weights: the content of each weights file (weights.content_id),
    except safetensors shards, which are identified by their header (names, dtypes, shapes,
    offsets), size and 16 samples of their data. A folder is the sorted list of its weight files."""
    src = Path(src)
    files = [src] if src.is_file() else sorted(
        f for pattern in ("*.safetensors", "*.bin", "*.pkl", "*.gguf") for f in src.glob(pattern))
    h = hashlib.sha1()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}|{size}|".encode())
        if f.suffix != ".safetensors":
            h.update(content_id(f).encode())
            continue
        with open(f, "rb") as fh:
            header_len = min(int.from_bytes(fh.read(8), "little"), max(size - 8, 0))   # never past the file
            h.update(fh.read(header_len))
            for offset in np.linspace(8 + header_len, max(size - (1 << 16), 8 + header_len), 16).astype(int):
                fh.seek(int(offset))
                h.update(fh.read(1 << 16))
    return h.hexdigest()


def build(model, samples, pad_id, out, tokens_per_batch=4096):
    """Write the [T_i, H] fp16 states of every sample into `out` ([sum T_i, H], e.g. a memmap),
    computed in length-sorted batches."""
    from tqdm import tqdm

    offsets = np.concatenate([[0], np.cumsum([len(s) for s in samples])])
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    i = 0
    bar = tqdm(total=int(offsets[-1]), desc="base hidden states", unit="tok", unit_scale=True)
    while i < len(order):
        longest = len(samples[order[i]])
        j = i + 1
        while j < len(order) and (j - i + 1) * len(samples[order[j]]) <= max(tokens_per_batch, longest):
            j += 1
        chunk = order[i:j]
        hidden = base_hidden(model, [samples[k] for k in chunk], pad_id).numpy()
        if not np.isfinite(hidden).all():
            raise UsageError(f"the base model's hidden states of sample {chunk[0]} (or its batch) hold NaN/inf: "
                             "the base model overflows on this data in its dtype (fp16 on a GPU): check the base weights")
        for row, k in enumerate(chunk):
            out[offsets[k]:offsets[k + 1]] = hidden[row, :len(samples[k])].astype(np.float16)
        bar.update(sum(len(samples[k]) for k in chunk))
        i = j
    bar.close()
    return out


def save(path, model, samples, pad_id):
    """Build the cache folder `path` (see the module docstring)."""
    path = Path(path)
    for i, s in enumerate(samples):             # before the first batch: an id past the embedding crashes Jittor
        check_ids(model.config, s.input_ids, f"training sample {i}")
    path.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray([len(s) for s in samples], np.int64)
    tmp = path / f"hidden.{os.getpid()}.tmp.npy"     # per process: two runs may share a --cache_dir
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(int(lengths.sum()), model.config.hidden_size))
    build(model, samples, pad_id, out)
    out.flush()
    del out
    os.replace(tmp, path / "hidden.npy")
    index_tmp = path / f"index.{os.getpid()}.tmp.npz"
    np.savez(index_tmp, lengths=lengths,
             ids=np.concatenate([s.input_ids for s in samples]).astype(np.int32))
    os.replace(index_tmp, path / "index.npz")


def load(path, samples, chunk_rows=1 << 16):
    """The cached [T_i, H] arrays (read-only memory-mapped views); CacheError when the folder
    is damaged, holds NaN/inf, or does not match `samples`."""
    path = Path(path)
    fix = "delete the folder to rebuild it"
    f = read_npz(path / "index.npz", ("lengths", "ids"), "hidden-state cache index", fix)
    lengths, ids = f["lengths"], f["ids"]
    expected = np.concatenate([s.input_ids for s in samples]).astype(np.int32)
    if len(lengths) != len(samples) or not np.array_equal(ids, expected) or lengths.sum() != len(expected):
        raise CacheError(f"{path}: hidden-state cache does not match the data ({fix})")
    try:
        hidden = np.load(path / "hidden.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:   # a truncated file: "mmap length is greater than file size"
        raise CacheError(f"{path / 'hidden.npy'}: unreadable hidden-state cache ({e}); {fix}") from e
    if hidden.ndim != 2 or hidden.shape[0] != len(expected):
        raise CacheError(f"{path / 'hidden.npy'}: holds {hidden.shape}, expected [{len(expected)}, H]; {fix}")
    for start in range(0, len(hidden), chunk_rows):    # one pass, a block at a time: nothing held
        block = hidden[start:start + chunk_rows]
        if not np.isfinite(block).all():
            row = start + int(np.argmax(~np.isfinite(block).all(-1)))
            raise CacheError(f"{path / 'hidden.npy'}: tensor hidden holds NaN/inf at row {row} (sample "
                             f"{int(np.searchsorted(np.cumsum(lengths), row, side='right'))}); {fix}")
    return np.split(hidden, np.cumsum(lengths)[:-1])


def load_or_build(model, samples, path, pad_id):
    path = Path(path)
    if jt.rank == 0 and not (path / "index.npz").is_file():
        save(path, model, samples, pad_id)
    if jt.in_mpi:
        jt.mpi.mpi_barrier()
    return load(path, samples)
