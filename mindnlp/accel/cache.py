"""Static KV cache: preallocated per layer, written in place at slots given as a device tensor.

Layout. Layer i keeps keys and values as Parameters of shape [B * kv_heads * max_len, head_dim],
read as [B, kv_heads, max_len, head_dim] by a reshape. A write overwrites the rows of its slots
with ScatterUpdate (in place on a Parameter, also inside a compiled graph): no host sync, no
`.item()`, no accumulation, fixed shapes. Verified on CPU in fp32; bf16 on Ascend is untested here.

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


class CacheWrite(NamedTuple):
    """Where one step writes: `slots` int32 [S]; `rows` int32 [B * kv_heads * S] into the flat cache."""
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
        rows = batch_size * num_kv_heads * max_len

        def buffer(name):
            return Parameter(ops.zeros((rows, head_dim), dtype=dtype), name=name, requires_grad=False)

        self.keys = [buffer(f"kv_cache.{i}.keys") for i in range(num_layers)]
        self.values = [buffer(f"kv_cache.{i}.values") for i in range(num_layers)]
        # First row of each (sequence, kv head) block: [B * kv_heads, 1].
        self._block_start = Tensor(np.arange(batch_size * num_kv_heads, dtype=np.int32)[:, None] * max_len)

    def prepare(self, slots: Tensor) -> CacheWrite:
        """Index for writing `slots` (int32 [S], on device); compute once per step, share across layers."""
        slots = slots.astype(mindspore.int32)
        rows = (self._block_start + slots.reshape(1, -1)).reshape(-1)
        return CacheWrite(slots, rows)

    def write(self, layer: int, where: CacheWrite, keys: Tensor, values: Tensor) -> None:
        """Overwrite layer `layer` at `where.slots` with keys/values [B, kv_heads, S, head_dim]."""
        expected = (self.batch_size, self.num_kv_heads, where.slots.shape[0], self.head_dim)
        if tuple(keys.shape) != expected or tuple(values.shape) != expected:
            raise ValueError(f"cache write wants keys/values {expected}, got {tuple(keys.shape)} "
                             f"and {tuple(values.shape)}")
        flat = (-1, self.head_dim)
        mindspore.ops.scatter_update(self.keys[layer], where.rows, keys.reshape(flat).astype(self.dtype))
        mindspore.ops.scatter_update(self.values[layer], where.rows, values.reshape(flat).astype(self.dtype))

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Reorder the batch rows in place, row b taking row beam_idx[b] (stock's beam search calls this)."""
        index = beam_idx.astype(mindspore.int32)
        per_row = (self.batch_size, -1)
        for buffer in self.keys + self.values:
            mindspore.ops.assign(buffer, buffer.reshape(per_row)[index].reshape(buffer.shape))

    def read(self, layer: int, kv_len: Optional[int] = None):
        """Keys and values of `layer` as [B, kv_heads, T, head_dim], T = kv_len or max_len."""
        shape = (self.batch_size, self.num_kv_heads, self.max_len, self.head_dim)
        keys, values = self.keys[layer].reshape(shape), self.values[layer].reshape(shape)
        if kv_len is None or kv_len == self.max_len:
            return keys, values
        self._check_len(kv_len)
        return keys[:, :, :kv_len], values[:, :, :kv_len]

    def _check_len(self, kv_len: int) -> None:
        if not 0 < kv_len <= self.max_len:
            raise ValueError(f"kv_len must be in [1, {self.max_len}], got {kv_len}")
