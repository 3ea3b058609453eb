"""Static KV cache: preallocated per layer, written in place at slots given as a device tensor.

Layout. Layer i keeps its keys and values in one Parameter of shape [B * 2 * kv_heads * max_len,
head_dim], read as [B, 2 * kv_heads, max_len, head_dim] by a reshape: heads [0, kv_heads) hold keys,
the rest values, as attention's projection lays them out. A write overwrites the rows of its slots
for keys and values at once with one ScatterUpdate (in place on a Parameter, also inside a compiled
graph): no host sync, no `.item()`, no accumulation, fixed shapes. Verified on CPU in fp32 and
fp16; bf16 on Ascend is untested here.

Slots. Slot t holds the t-th token of the padded batch (prompt padding included), the same slot
for every row. A step that feeds S tokens writes slots given by an int32 device tensor [S];
`prepare(slots)` turns them into the row index every layer reuses in that step.

Masking. The cache holds no validity flags: the caller's attention mask ([B, T], 1 for real tokens)
and the query slots decide what a query sees (layers.attention.build_attention_mask). Slots a step
has not written yet, or that hold a previous call's tokens, lie after every query slot and are
hidden by causality, so reusing a cache needs no clearing. A caller that knows the filled length on
the host may pass `kv_len` to read only that prefix.
"""
from typing import NamedTuple, Optional

import numpy as np
import mindspore
from mindspore import Parameter, Tensor
from mindnlp.core import ops

from .layers.primitives import narrow, scatter_update


class CacheWrite(NamedTuple):
    """Where one step writes: `slots` int32 [S]; `rows` int32 [B * 2 * kv_heads * S] into the flat cache."""
    slots: Tensor
    rows: Tensor


class StaticKVCache:
    """Keys and values of `num_layers` layers for `batch_size` sequences of up to `max_len` tokens."""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int,
                 head_dim: int, dtype=mindspore.float32):
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size),
                            ("num_kv_heads", num_kv_heads), ("max_len", max_len), ("head_dim", head_dim)):
            if value < 1:
                raise ValueError(f"StaticKVCache {name} must be positive, got {value}")
        self.num_layers, self.batch_size, self.num_kv_heads = num_layers, batch_size, num_kv_heads
        self.max_len, self.head_dim, self.dtype = max_len, head_dim, dtype
        blocks = batch_size * 2 * num_kv_heads
        self.buffers = [Parameter(ops.zeros((blocks * max_len, head_dim), dtype=dtype),
                                  name=f"kv_cache.{i}", requires_grad=False) for i in range(num_layers)]
        # First row of each (sequence, key or value head) block: [B * 2 * kv_heads, 1].
        self._block_start = Tensor(np.arange(blocks, dtype=np.int32)[:, None] * max_len)

    def prepare(self, slots: Tensor) -> CacheWrite:
        """Index for writing `slots` (int32 [S], on device); compute once per step, share across layers."""
        slots = slots.astype(mindspore.int32)
        rows = (self._block_start + slots.reshape(1, -1)).reshape(-1)
        return CacheWrite(slots, rows)

    def write(self, layer: int, where: CacheWrite, keys_values: Tensor) -> None:
        """Overwrite layer `layer` at `where.slots` with keys_values [B, 2 * kv_heads, S, head_dim]
        (keys in the first kv_heads heads, values in the rest)."""
        expected = (self.batch_size, 2 * self.num_kv_heads, where.slots.shape[0], self.head_dim)
        if tuple(keys_values.shape) != expected:
            raise ValueError(f"cache write wants keys and values {expected}, got {tuple(keys_values.shape)}")
        if keys_values.dtype != self.dtype:
            keys_values = keys_values.astype(self.dtype)
        scatter_update(self.buffers[layer], where.rows, keys_values.reshape(-1, self.head_dim))

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Reorder the batch rows in place, row b taking row beam_idx[b] (stock's beam search calls this)."""
        index = beam_idx.astype(mindspore.int32)
        per_row = (self.batch_size, -1)
        for buffer in self.buffers:
            mindspore.ops.assign(buffer, buffer.reshape(per_row)[index].reshape(buffer.shape))

    def read(self, layer: int, kv_len: Optional[int] = None):
        """Keys and values of `layer` as [B, kv_heads, T, head_dim], T = kv_len or max_len."""
        buffer = self.buffers[layer].reshape(self.batch_size, 2 * self.num_kv_heads, self.max_len, self.head_dim)
        if kv_len is not None and kv_len != self.max_len:
            self._check_len(kv_len)
            buffer = narrow(buffer, 2, 0, kv_len)
        return ops.chunk(buffer, 2, 1)

    def _check_len(self, kv_len: int) -> None:
        if not 0 < kv_len <= self.max_len:
            raise ValueError(f"kv_len must be in [1, {self.max_len}], got {kv_len}")
