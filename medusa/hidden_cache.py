"""The frozen base model's hidden states for head training, per batch or cached once on disk.

Heads read the base's final-normed hidden states [T, H]; the base never trains, so its states
for a fixed data set can be computed once and reused every epoch (the trainer's offline mode).
The cache is one .npz per (data file content, model, max_length, template, dtype) key:

    hidden  [sum T_i, H] fp16   the states of every sample, concatenated
    lengths [n] int64           T_i
    ids     [sum T_i] int32     the token ids they belong to (checked on load)

fp16 halves the disk and memory (H = 576, ~1.1 KB per token); heads compute in fp32.
Under MPI only rank 0 builds and writes it (tmp file + os.replace, so a reader never sees a
half-written file) while the others wait at a barrier, then every rank reads the same file.
"""
import hashlib
import os
from pathlib import Path

import numpy as np

from medusa.runtime import jt


def base_hidden(model, samples, pad_id):
    """Final-normed hidden states [B, T, H] of right-padded samples (no gradient)."""
    from medusa.core import hidden_states
    from medusa.data import collate

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
    from medusa.weights import content_id

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
            header_len = int.from_bytes(fh.read(8), "little")
            h.update(fh.read(header_len))
            for offset in np.linspace(8 + header_len, max(size - (1 << 16), 8 + header_len), 16).astype(int):
                fh.seek(int(offset))
                h.update(fh.read(1 << 16))
    return h.hexdigest()


def build(model, samples, pad_id, tokens_per_batch=4096):
    """[T_i, H] fp16 arrays of every sample, computed in length-sorted batches."""
    from tqdm import tqdm

    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    out, i = [None] * len(samples), 0
    bar = tqdm(total=len(samples), desc="base hidden states", unit="sample")
    while i < len(order):
        longest = len(samples[order[i]])
        j = i + 1
        while j < len(order) and (j - i + 1) * len(samples[order[j]]) <= max(tokens_per_batch, longest):
            j += 1
        chunk = order[i:j]
        hidden = base_hidden(model, [samples[k] for k in chunk], pad_id).numpy()
        for row, k in enumerate(chunk):
            out[k] = hidden[row, :len(samples[k])].astype(np.float16)
        bar.update(len(chunk))
        i = j
    bar.close()
    return out


def save(path, samples, hiddens):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, hidden=np.concatenate(hiddens), lengths=np.asarray([len(s) for s in samples], np.int64),
             ids=np.concatenate([s.input_ids for s in samples]).astype(np.int32))
    os.replace(tmp, path)


def load(path, samples):
    """The cached [T_i, H] arrays; ValueError when the file does not match `samples`."""
    with np.load(path) as f:
        hidden, lengths, ids = f["hidden"], f["lengths"], f["ids"]
    expected = np.concatenate([s.input_ids for s in samples]).astype(np.int32)
    if len(lengths) != len(samples) or not np.array_equal(ids, expected):
        raise ValueError(f"{path}: hidden-state cache does not match the data (delete it to rebuild)")
    return np.split(hidden, np.cumsum(lengths)[:-1])


def load_or_build(model, samples, path, pad_id):
    path = Path(path)
    if jt.rank == 0 and not path.is_file():
        save(path, samples, build(model, samples, pad_id))
    if jt.in_mpi:
        jt.mpi.mpi_barrier()
    return load(path, samples)
