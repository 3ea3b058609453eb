"""Rotary position embedding: cos/sin tables built once per forward and shared by every layer.

Stock computes inverse frequencies, angles, cos and sin in fp32 and casts cos/sin to the activation
dtype before applying them; the rotation itself runs in the activation dtype. We keep that policy.
Two stock forms exist and we reproduce each with the op stock uses, so tables match bit for bit:
  "table"  (Qwen2-MoE, deepseek): angles = outer(arange(max_positions), inv_freq) built once at
           init; a forward gathers the rows of its position ids.
  "matmul" (Llama, Qwen2-VL): angles = inv_freq[:, None] @ position_ids[None, :] per forward
           (a K=1 matmul, for M-RoPE once per position stream).
Stock rotates x as x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1]. We compute
x * cos + swap_halves(x) * sin_signed, sin_signed = [-sin1, sin2] built once per forward: negating
a factor negates the rounded product exactly, so every element is stock's, without a Neg per call.
"""
from typing import NamedTuple, Optional, Sequence

import mindspore
from mindspore import Tensor
from mindnlp.core import nn, ops

from ..device import choose

FORMS = ("table", "matmul")


class RotaryTables(NamedTuple):
    """The tables of one forward, each [B, S, head_dim] in the activation dtype."""
    cos: Tensor
    sin: Tensor  # stock's sin (the fused Ascend kernel's form)
    sin_signed: Tensor  # sin with its first half negated (the composite's form)


def inverse_frequencies(head_dim: int, base: float):
    """fp32 [head_dim // 2]: base ** (-2i / head_dim), computed as stock does."""
    exponents = ops.arange(0, head_dim, 2, dtype=mindspore.int64).float() / head_dim
    return 1.0 / (base ** exponents)


class RotaryEmbedding(nn.Module):
    """Builds RotaryTables, each [B, S, head_dim] in the activation dtype, for the given positions.

    position_ids: int [B, S], or [3, B, S] (temporal, height, width streams) when `mrope_section`
    is given; with M-RoPE the head_dim channels are split by mrope_section (doubled, for the two
    halves) and chunk i takes its angles from stream i % 3, as Qwen2-VL does.
    `scaling` is the post-processing attention factor of scaled rope types (1.0 for default rope).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, form: str = "matmul",
                 max_positions: Optional[int] = None, mrope_section: Optional[Sequence[int]] = None,
                 scaling: float = 1.0):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"rotary form must be one of {FORMS}, got {form!r}")
        if form == "table" and not max_positions:
            raise ValueError("rotary form 'table' needs max_positions")
        if form == "table" and mrope_section is not None:
            raise ValueError("M-RoPE is computed per forward: use form 'matmul'")
        if mrope_section is not None and 2 * sum(mrope_section) != head_dim:
            raise ValueError(f"mrope_section {list(mrope_section)} must sum to head_dim / 2 = {head_dim // 2}")
        self.head_dim = head_dim
        self.form = form
        self.mrope_section = list(mrope_section) if mrope_section is not None else None
        self.scaling = scaling
        self.max_positions = max_positions
        self.register_buffer("inv_freq", inverse_frequencies(head_dim, base), persistent=False)
        if form == "table":
            positions = ops.arange(max_positions, dtype=mindspore.int64).float()
            cos, sin = self._cos_sin(ops.outer(positions, self.inv_freq))
            self.register_buffer("cos_table", cos, persistent=False)
            self.register_buffer("sin_table", sin, persistent=False)

    def forward(self, position_ids, dtype):
        if self.form == "table":
            cos, sin = self.cos_table[position_ids], self.sin_table[position_ids]
        else:
            cos, sin = self._cos_sin(self._matmul_angles(position_ids))
        if self.mrope_section is not None:
            cos, sin = self._select_sections(cos), self._select_sections(sin)
        return make_tables(cos.to(dtype), sin.to(dtype))

    def _matmul_angles(self, position_ids):
        """fp32 angles [..., S, head_dim // 2] for int positions [..., S] ([B, S] or [3, B, S])."""
        lead = tuple(position_ids.shape[:-1])
        inv_freq = self.inv_freq.float().reshape((1,) * len(lead) + (-1, 1))
        inv_freq = inv_freq.broadcast_to(lead + (self.head_dim // 2, 1))
        positions = position_ids.float().unsqueeze(-2)
        return ops.matmul(inv_freq, positions).swapaxes(-1, -2)

    def _cos_sin(self, angles):
        emb = ops.cat((angles, angles), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.scaling != 1.0:
            cos, sin = cos * self.scaling, sin * self.scaling
        return cos, sin

    def _select_sections(self, table):
        """[3, B, S, D] -> [B, S, D]: channel chunk i comes from position stream i % 3."""
        chunks = ops.split(table, self.mrope_section * 2, dim=-1)
        return ops.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)


def make_tables(cos, sin) -> RotaryTables:
    """RotaryTables from cos and sin, adding sin_signed = [-sin1, sin2] (negation is exact)."""
    half = sin.shape[-1] // 2
    return RotaryTables(cos, sin, ops.cat((-sin[..., :half], sin[..., half:]), dim=-1))


def swap_halves(x):
    """[x1, x2] -> [x2, x1] over the last axis."""
    x1, x2 = ops.split(x, x.shape[-1] // 2, dim=-1)
    return ops.cat((x2, x1), dim=-1)


def apply_rotary_composite(x, tables: RotaryTables):
    """x [B, S, N, D]; tables [B, S, 1, D] in x's dtype. Stock's products and sum, in stock's order."""
    return (x * tables.cos) + (swap_halves(x) * tables.sin_signed)


def apply_rotary_fused(x, tables: RotaryTables):
    """Ascend's RotaryPositionEmbedding, rotate_half mode, BSND layout (allowed for decode, S=1)."""
    return mindspore.ops.rotary_position_embedding(x, tables.cos, tables.sin, 0)


def apply_rotary(x, tables: RotaryTables):
    """Rotate x [B, S, N, D] by the tables of RotaryEmbedding.forward ([B, S, D]).

    Every head is rotated alike, so q and k heads side by side in one x are rotated in one call,
    each exactly as alone. On Ascend the fused kernel is used only if it matches the composite bit
    for bit on this device: in bf16 stock rounds after each multiply and after the add, which a
    fused kernel computing in fp32 would not reproduce.
    """
    if x.shape[:2] != tables.cos.shape[:2] or x.shape[-1] != tables.cos.shape[-1]:
        raise ValueError(f"rotary tables {tuple(tables.cos.shape)} do not fit x {tuple(x.shape)} "
                         f"(want [B, S, D])")
    tables = RotaryTables(*(table.unsqueeze(2) for table in tables))
    dtype, heads, dim = x.dtype, x.shape[2], x.shape[3]

    def make_inputs():
        angles = ops.randn(2, 5, 1, dim)
        return ops.randn(2, 5, heads, dim).to(dtype), make_tables(angles.cos().to(dtype), angles.sin().to(dtype))

    impl = choose(f"rotary_position_embedding/{dtype}/{heads}x{dim}",
                  apply_rotary_fused, apply_rotary_composite, make_inputs)
    return impl(x, tables)
