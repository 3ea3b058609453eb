"""Qwen2-VL's vision tower on the shared pre-LN block, with stock's arithmetic and none of its host
syncs or per-block rebuilding.

Stock (Qwen2VisionTransformerPretrainedModel) reads the grid on the host several times per forward
and, in each of its 32 blocks, recomputes cos and sin for q and for k, rotates them with rotate_half
(slices, a negation, a concatenation), and fills an S x S mask in a Python loop over the images.
Here the grid is read once (host data the processor made), the rotary tables are made once per
forward, q and k are rotated together by one Mul and one sum (layers.rotary, in fp32 as stock
rotates them, then cast back), and each image (each frame of a video) attends over its own patches,
which for one image is stock's attention with its all-zero mask left out (s + 0 == s); for several,
stock's masked row sums the other images' zero probabilities too, and this CPU's kernels sum rows
of another length in another order, so the last bits may differ (tests/test_qwen2_vl_vision.py
bounds it). Queries are taken in chunks whose scores fit a memory budget (layers.vision.query_chunks)
where that gives one call's bits. Then, as
stock: q @ k^T divided by sqrt(head_dim), softmax in fp32 cast back, @ v, the output projection;
the MLP with the config's activation (quick_gelu); stock's patch merger and Conv3d patch embedding
(as one matmul on Ascend where that is bit-identical: CheckedPatchEmbed). Where graphs are on, the
tower runs as one graph per bucket of patches (qwen2_vl_tower_graph, forward_masked).
"""
import numpy as np
import mindspore
from mindnlp.common.activations import ACT2FN
from mindnlp.core import nn, ops
from mindnlp.core.nn import functional as F
from mindnlp.transformers.models.qwen2_vl.modeling_qwen2_vl import PatchEmbed, PatchMerger

from .. import device
from ..layers.primitives import narrow, take_rows
from ..layers.rotary import RotaryTables, apply_rotary_composite, inverse_frequencies, make_tables
from ..layers.vision import (FUSED_ATOL, FUSED_RTOL, AttentionProjections, VisionBlock, attend_in_chunks,
                             attend_keys_in_chunks, chunking_exact, query_chunks)
from . import qwen2_vl_tower_graph as tower_graph
from .qwen2_vl_positions import frame_spans, host_array, patch_order

LAYER_NORM_EPS = 1e-6
ROPE_THETA = 10000.0


class RotaryVisionAttention(AttentionProjections):
    """Bidirectional attention over [S, dim] patches with 2-D rotary q and k, stock's names."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self._chunking = {}  # dtype -> whether queries may be taken in chunks (prepare_kernels)

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        if dtype not in self._chunking:
            self._chunking[dtype] = chunking_exact(dtype, self.num_heads, self.head_dim)

    def forward(self, x, rope: RotaryTables, spans, key_bias=None):
        """x [S, dim], rope fp32 tables [1, S, ...] (`VisionTower.rotary_tables`), spans: host (start,
        stop) of each image's patches, each attending over its own; or, with `key_bias` [S] (0 for an
        image's patch, -inf for padding: one image padded to a bucket), every patch over the image's."""
        tokens = x.shape[0]
        heads, dim = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(1, tokens, 3 * heads, dim)
        # stock rotates q and k in fp32 and casts them back; both together in one call
        qk = apply_rotary_composite(narrow(qkv, 2, 0, 2 * heads).float(), rope).to(x.dtype)
        qk = qk.reshape(tokens, 2 * heads, dim).swapaxes(0, 1)  # [2 heads, S, D]
        q, k = narrow(qk, 0, 0, heads), narrow(qk, 0, heads, heads)
        v = narrow(qkv, 2, 2 * heads, heads).reshape(tokens, heads, dim).swapaxes(0, 1)
        if key_bias is not None:
            out = attend_keys_in_chunks(q, k, v, key_bias, query_chunks(tokens, tokens, heads, x.dtype))
        else:
            out = ops.cat([self._attend_span(narrow(q, 1, a, b - a), narrow(k, 1, a, b - a), narrow(v, 1, a, b - a))
                           for a, b in spans], dim=1) if len(spans) > 1 else self._attend_span(q, k, v)
        return self.proj(out.swapaxes(0, 1).reshape(tokens, heads * dim))

    def _attend_span(self, q, k, v):
        """One image's patches over themselves: stock's arithmetic (no mask: every patch sees its image),
        in query chunks where that gives the same bits here (chunking_exact)."""
        rows = q.shape[1]
        chunks = query_chunks(rows, rows, self.num_heads, q.dtype) if self._chunking.get(q.dtype) else [(0, rows)]
        return attend_in_chunks(q, k, v, chunks)


class CheckedPatchEmbed(PatchEmbed):
    """Stock's patch embedding (a Conv3d whose kernel equals its stride, so each patch is exactly one
    kernel window), and on Ascend the same product as one matmul against the kernel reshaped to
    [embed_dim, C * T * P * P], where the self-check finds it bit-identical to the Conv3d on this
    device, or within tolerance with MINDNLP_ACCEL_INEXACT=1 (device.choose; a contest team found
    Conv3D slow there). On this CPU the two sum in different orders, so the Conv3d stays."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._kernels = {}  # dtype -> conv or matmul (prepare_kernels)

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        if dtype in self._kernels:
            return
        width = self.in_channels * self.temporal_patch_size * self.patch_size ** 2

        def inputs():
            return (ops.randn(64, width).to(dtype),)
        self._kernels[dtype] = device.choose(f"patch_embed_matmul/{dtype}/{self.embed_dim}x{width}", self.matmul,
                                             self.conv, inputs, atol=FUSED_ATOL, rtol=FUSED_RTOL)

    def forward(self, hidden_states):
        return self._kernels.get(hidden_states.dtype, self.conv)(hidden_states)

    def conv(self, hidden_states):
        return super().forward(hidden_states)

    def matmul(self, hidden_states):
        weight = self.proj.weight
        return F.linear(hidden_states.to(weight.dtype), weight.reshape(self.embed_dim, -1))


class VisionTower(nn.Module):
    """Drop-in for Qwen2VisionTransformerPretrainedModel in inference, under its checkpoint names
    (patch_embed, blocks.{i}.norm1/attn/norm2/mlp, merger).

    forward(pixel_values [S, C * T * P * P] as the processor makes them, grid_thw int [images, 3])
    -> [S / merge ** 2, hidden_size]."""

    def __init__(self, config):
        super().__init__()
        self.spatial_merge_size = config.spatial_merge_size
        self.patch_embed = CheckedPatchEmbed(patch_size=config.patch_size, in_channels=config.in_channels,
                                             temporal_patch_size=config.temporal_patch_size,
                                             embed_dim=config.embed_dim)
        head_dim = config.embed_dim // config.num_heads
        self.register_buffer("inv_freq", inverse_frequencies(head_dim // 2, ROPE_THETA), persistent=False)
        mlp_hidden = int(config.embed_dim * config.mlp_ratio)
        self.blocks = nn.ModuleList([
            VisionBlock(config.embed_dim, RotaryVisionAttention(config.embed_dim, config.num_heads), mlp_hidden,
                        LAYER_NORM_EPS, ACT2FN[config.hidden_act])
            for _ in range(config.depth)])
        self.merger = PatchMerger(dim=config.hidden_size, context_dim=config.embed_dim,
                                  spatial_merge_size=config.spatial_merge_size)

    def get_dtype(self):
        return self.blocks[0].mlp.fc2.weight.dtype

    def rotary_tables(self, order, sides: int) -> RotaryTables:
        """fp32 tables [1, S, ...] for patches at (row, column) `order` (int32 [S, 2], patch_order) of
        images at most `sides` patches wide or high: angles of the row, then of the column (stock's
        freqs_full[pos_ids] flattened), doubled for the two halves rotate_half pairs. A larger `sides`
        gives the same values (each angle is one product)."""
        angles = ops.outer(ops.arange(sides, dtype=self.inv_freq.dtype), self.inv_freq)
        angles = take_rows(angles, order.reshape(-1)).reshape(1, order.shape[0], -1)
        emb = ops.cat((angles, angles), dim=-1)
        return make_tables(emb.cos(), emb.sin())

    def forward(self, pixel_values, grid_thw):
        grid = host_array(grid_thw).astype(np.int64).reshape(-1, 3)
        return tower_graph.run(self, pixel_values, grid)

    def forward_spans(self, pixel_values, grid: np.ndarray):
        """The tower over the images of `grid` (host [images, 3]), each attending over its own patches."""
        hidden = self.patch_embed(pixel_values)
        order = mindspore.Tensor(patch_order(grid, self.spatial_merge_size))
        rope, spans = self.rotary_tables(order, int(grid[:, 1:].max())), frame_spans(grid)
        for block in self.blocks:
            hidden = block(hidden, rope, spans)
        return self.merger(hidden)

    def forward_masked(self, pixel_values, order, key_bias):
        """The tower over one image's patches padded to a bucket (tower_graph): `order` int32 [S, 2] their
        (row, column), `key_bias` [S] 0 for the image's patches and -inf for the padding, which no image
        patch then sees. Every shape is the bucket's: a graph per bucket."""
        tokens = pixel_values.shape[0]
        hidden = self.patch_embed(pixel_values)
        rope = self.rotary_tables(order, tokens // 2)  # no side is longer than half the patches (2 x 2 windows)
        for block in self.blocks:
            hidden = block(hidden, rope, None, key_bias)
        return self.merger(hidden)
