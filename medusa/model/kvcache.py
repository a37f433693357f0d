"""Preallocated key/value cache with accepted-path compaction.

Layout per layer: keys and values [B, kv_heads, max_len, head_dim]. `length` lives on the host
(a Python int), so appending and slicing never synchronise with the device.
"""
import numpy as np

from medusa.kernels import cuda as cuda_kernels
from medusa.runtime.backend import jt


class KVCache:
    def __init__(self, cfg, batch: int, max_len: int, dtype: str = "float32"):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.batch, self.max_len, self.dtype = batch, max_len, dtype
        self.keys = [jt.zeros(shape, dtype).stop_grad() for _ in range(cfg.num_hidden_layers)]
        self.values = [jt.zeros(shape, dtype).stop_grad() for _ in range(cfg.num_hidden_layers)]
        self.length = 0

    def check_room(self, new_len: int):
        if self.length + new_len > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} cached + {new_len} new tokens "
                             f"> max_len {self.max_len} (raise max_len or shorten the prompt)")

    def update(self, layer: int, k, v):
        """Write k, v [B, kv_heads, T, D] at [length, length+T); return the full views [.., :length+T, :]."""
        keys, values, end = self.write(layer, k, v)
        return keys[:, :, :end], values[:, :, :end]

    def write(self, layer: int, k, v):
        """Write k, v [B, kv_heads, T, D] at [length, length+T) -> (the whole key and value
        buffers [B, kv_heads, max_len, D], the valid length): for kernels that read the first
        positions themselves instead of a sliced copy (cuda_kernels.cache_attention)."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer], self.values[layer], end

    def buffers(self, layer: int):
        """(keys, values): the layer's whole buffers [B, kv_heads, max_len, D], for a kernel that
        writes the new positions itself (cuda_kernels.qkv_rope_into_cache) at [length, ...)."""
        return self.keys[layer], self.values[layer]

    def advance(self, n: int):
        self.length += n

    def compact(self, start: int, keep):
        """Move the entries at absolute positions `keep` (ascending, each >= start) to
        start, start+1, ...; the cache then holds `start + len(keep)` positions."""
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        if keep.size and (keep.min() < start or keep.max() >= self.length):
            raise ValueError(f"compact: positions {keep.tolist()} outside [{start}, {self.length})")
        n = int(keep.size)
        buffers = self.keys + self.values
        if n and not np.array_equal(keep, np.arange(start, start + n)):
            if cuda_kernels.compact_ok(buffers, n):
                cuda_kernels.compact_cache(buffers, start, keep).sync()   # one kernel for every layer
            else:
                self._copy_positions(start, jt.array(keep.astype(np.int32)))
        self.length = start + n

    def move(self, start: int, keep):
        """Copy the positions in `keep` (a jt int32 [n] var, absolute, each >= start; it may
        repeat) to start, start + 1, ... in every layer, the length unchanged: compact() for a
        path the host has not fetched (decoding's device loop truncates once it knows the
        length). -> a var to sync (one kernel on a GPU), or None (the moves are graph ops)."""
        buffers = self.keys + self.values
        if cuda_kernels.compact_ok(buffers, keep.shape[0]):
            return cuda_kernels.compact_cache_at(buffers, start, keep)
        self._copy_positions(start, keep)
        return None

    def _copy_positions(self, start: int, index):
        """Jittor's ops for compact/move: positions `index` (jt int32 [n]) to start, start + 1, ..."""
        n = index.shape[0]
        for layer in range(len(self.keys)):
            self.keys[layer][:, :, start:start + n] = self.keys[layer][:, :, index]
            self.values[layer][:, :, start:start + n] = self.values[layer][:, :, index]

    def truncate(self, length: int):
        """Forget every position from `length` on (they are overwritten by what comes next)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate to {length}: the cache holds {self.length} positions")
        self.length = length

    def reset(self):
        self.length = 0
