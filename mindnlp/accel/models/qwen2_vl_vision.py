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
bounds it). Then, as
stock: q @ k^T divided by sqrt(head_dim), softmax in fp32 cast back, @ v, the output projection;
the MLP with the config's activation (quick_gelu); stock's patch merger and Conv3d patch embedding
(as one matmul on Ascend where that is bit-identical: CheckedPatchEmbed).
"""
import numpy as np
import mindspore
from mindnlp.common.activations import ACT2FN
from mindnlp.core import nn, ops
from mindnlp.core.nn import functional as F
from mindnlp.transformers.models.qwen2_vl.modeling_qwen2_vl import PatchEmbed, PatchMerger

from .. import device
from ..layers.attention import attention_eager
from ..layers.primitives import take_rows
from ..layers.rotary import RotaryTables, apply_rotary_composite, inverse_frequencies, make_tables
from ..layers.vision import FUSED_ATOL, FUSED_RTOL, AttentionProjections, VisionBlock
from .qwen2_vl_positions import host_array

LAYER_NORM_EPS = 1e-6
ROPE_THETA = 10000.0


def attend_span(q, k, v):
    """q, k, v [heads, n, head_dim] of one image -> [heads, n, head_dim]: the decoder's eager
    attention, which is stock's arithmetic here too (no mask: every patch sees its image)."""
    return attention_eager(q[None], k[None], v[None], None)[0]


class RotaryVisionAttention(AttentionProjections):
    """Bidirectional attention over [S, dim] patches with 2-D rotary q and k, stock's names."""

    def forward(self, x, rope: RotaryTables, spans):
        """x [S, dim], rope fp32 tables [1, S, ...] (`VisionTower.rotary_tables`), spans: host
        (start, stop) of each image's patches."""
        tokens = x.shape[0]
        heads, dim = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(1, tokens, 3 * heads, dim)
        # stock rotates q and k in fp32 and casts them back; both together in one call
        qk = apply_rotary_composite(qkv[:, :, :2 * heads].float(), rope).to(x.dtype)
        qk = qk.reshape(tokens, 2 * heads, dim).swapaxes(0, 1)  # [2 heads, S, D]
        q, k, v = qk[:heads], qk[heads:], qkv[0, :, 2 * heads:].swapaxes(0, 1)
        if len(spans) == 1:
            out = attend_span(q, k, v)
        else:
            out = ops.cat([attend_span(q[:, a:b], k[:, a:b], v[:, a:b]) for a, b in spans], dim=1)
        return self.proj(out.swapaxes(0, 1).reshape(tokens, heads * dim))


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


def patch_order(grid: np.ndarray, merge: int) -> np.ndarray:
    """int32 [S, 2]: each patch's (row, column) in the processor's order, 2 x 2 merge windows
    contiguous, frames one after another (stock's rot_pos_emb)."""
    ids = []
    for t, h, w in grid.tolist():
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        window = lambda a: a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)  # noqa: E731
        ids.append(np.tile(np.stack([window(rows), window(cols)], -1), (t, 1)))
    return np.concatenate(ids).astype(np.int32)


def frame_spans(grid: np.ndarray):
    """[(start, stop)] of every frame's patches (an image is one frame)."""
    ends = np.cumsum(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])).tolist()
    return list(zip([0] + ends[:-1], ends))


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

    def rotary_tables(self, grid: np.ndarray) -> RotaryTables:
        """fp32 tables [1, S, ...]: angles of the patch's row, then of its column (stock's
        freqs_full[pos_ids] flattened), doubled for the two halves rotate_half pairs."""
        order = patch_order(grid, self.spatial_merge_size)
        angles = ops.outer(ops.arange(int(grid[:, 1:].max()), dtype=self.inv_freq.dtype), self.inv_freq)
        angles = take_rows(angles, mindspore.Tensor(order.reshape(-1))).reshape(1, order.shape[0], -1)
        emb = ops.cat((angles, angles), dim=-1)
        return make_tables(emb.cos(), emb.sin())

    def forward(self, pixel_values, grid_thw):
        grid = host_array(grid_thw).astype(np.int64).reshape(-1, 3)
        hidden = self.patch_embed(pixel_values)
        rope, spans = self.rotary_tables(grid), frame_spans(grid)
        for block in self.blocks:
            hidden = block(hidden, rope, spans)
        return self.merger(hidden)
