"""Rotary position embedding: cos/sin tables built once per forward and shared by every layer.

Stock computes inverse frequencies, angles, cos and sin in fp32 and casts cos/sin to the activation
dtype before applying them; the rotation itself runs in the activation dtype. We keep that policy.
Two stock forms exist and we reproduce each with the op stock uses, so tables match bit for bit:
  "table"  (Qwen2-MoE, deepseek): angles = outer(arange(max_positions), inv_freq) built once at
           init; a forward gathers the rows of its position ids.
  "matmul" (Llama, Qwen2-VL): angles = inv_freq[:, None] @ position_ids[None, :] per forward
           (a K=1 matmul, for M-RoPE once per position stream).
Stock rotates x as x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1], that is
out_o = x_o * cos_o + x_(1-o) * s_o for the halves o = 0, 1 with s = [-sin1, sin2] (negating a
factor negates the rounded product exactly). We build, once per forward, the 2x2 table
rotation[o, i] = cos_o if i == o else s_o, and rotate with one Mul and one sum over i: the Mul makes
exactly stock's two rounded products and the sum of the two rounds once, as stock's Add does
(addition is commutative). Every element is stock's, in two launches instead of four.
"""
import math
from typing import NamedTuple, Optional, Sequence

import mindspore
from mindspore import Tensor
from mindnlp.core import nn, ops

from .. import device
from .primitives import broadcast_to, narrow, take_rows

FORMS = ("table", "matmul")


class RotaryTables(NamedTuple):
    """The tables of one forward in the activation dtype.

    cos, sin: [B, S, 1, head_dim], stock's (the fused Ascend kernel's form).
    rotation: [B, S, G, 1, 2, 2, head_dim // 2], the composite's form (see the module docstring):
        heads are taken as G equal groups, group g rotated by rotation[:, :, g]; G is 1, or more
        after `with_identity_group`.
    """
    cos: Tensor
    sin: Tensor
    rotation: Tensor


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
        # (dtype, rotated_groups) -> (cos_table, sin_table, every position's tables as rows, their shapes)
        self._position_rows = {}

    def forward(self, position_ids, dtype) -> RotaryTables:
        if self.form == "table":
            cos, sin = self.cos_table[position_ids], self.sin_table[position_ids]
        else:
            cos, sin = self._cos_sin(self._matmul_angles(position_ids))
        if self.mrope_section is not None:
            cos, sin = self._select_sections(cos), self._select_sections(sin)
        return make_tables(cos.to(dtype), sin.to(dtype))

    def grouped(self, position_ids, dtype, rotated_groups: int) -> RotaryTables:
        """with_identity_group(self(position_ids, dtype), rotated_groups), the same values.

        For the form "table" every position's cos, sin and rotation are one row of a table built
        from stock's tables (a cast, negation and copies, all exact), so a forward gathers one row
        per position: one launch where building them takes eight."""
        if self.form != "table":
            return with_identity_group(self(position_ids, dtype), rotated_groups)
        table, shapes = self._rows(dtype, rotated_groups)
        batch, steps = position_ids.shape
        rows = take_rows(table, position_ids.reshape(-1))
        parts, start = [], 0
        for shape in shapes:
            width = math.prod(shape)
            parts.append(narrow(rows, 1, start, width).reshape((batch, steps) + shape))
            start += width
        return RotaryTables(*parts)

    def prepare_rows(self, dtype, rotated_groups: int) -> None:
        """Build `grouped`'s rows for `dtype` now (form "table"; nothing for "matmul")."""
        if self.form == "table":
            self._rows(dtype, rotated_groups)

    def _rows(self, dtype, rotated_groups: int):
        """[max_positions, width] rows of every position's grouped tables and each table's shape past
        [B, S]; built once per dtype and group count, and again when the module's cos and sin tables
        were replaced (a cast of the module), so that they stay those forward reads."""
        key = (dtype, rotated_groups)
        cached = self._position_rows.get(key)
        if cached is None or cached[0] is not self.cos_table or cached[1] is not self.sin_table:
            every = with_identity_group(make_tables(self.cos_table.to(dtype).unsqueeze(0),
                                                    self.sin_table.to(dtype).unsqueeze(0)), rotated_groups)
            rows = ops.cat([t.reshape(self.max_positions, -1) for t in every], dim=-1)
            cached = (self.cos_table, self.sin_table, rows, [tuple(t.shape[2:]) for t in every])
            self._position_rows[key] = cached
        return cached[2], cached[3]

    def _matmul_angles(self, position_ids):
        """fp32 angles [..., S, head_dim // 2] for int positions [..., S] ([B, S] or [3, B, S])."""
        lead = tuple(position_ids.shape[:-1])
        inv_freq = self.inv_freq.float().reshape((1,) * len(lead) + (-1, 1))
        inv_freq = broadcast_to(inv_freq, lead + (self.head_dim // 2, 1))
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
        return ops.cat([narrow(chunk, 0, i % 3, 1).reshape(chunk.shape[1:]) for i, chunk in enumerate(chunks)], dim=-1)


def make_tables(cos, sin) -> RotaryTables:
    """RotaryTables from stock's cos and sin [B, S, D] (adds the head axis and the rotation table)."""
    batch, steps, dim = cos.shape
    half = dim // 2
    # rotation[o, i] over the halves: [[cos1, -sin1], [sin2, cos2]], as [B, S, 1, 1, 2, 2, D/2]
    rotation = ops.cat((narrow(cos, -1, 0, half), -narrow(sin, -1, 0, half), narrow(sin, -1, half, half),
                        narrow(cos, -1, half, half)), dim=-1)
    return RotaryTables(cos.unsqueeze(2), sin.unsqueeze(2), rotation.reshape(batch, steps, 1, 1, 2, 2, half))


def with_identity_group(tables: RotaryTables, rotated_groups: int) -> RotaryTables:
    """Tables whose rotation rotates the first `rotated_groups` head groups and passes a last group
    through unchanged (x * 1 + other * 0 == x): attention's q and k heads are rotated and its v
    heads kept in one call, which leaves k and v side by side for one cache write.
    Build it once per forward; `rotated_groups` groups of the attention's kv head count each."""
    rotation = tables.rotation
    shape = tuple(rotation.shape)
    eye = ops.eye(2, dtype=rotation.dtype).reshape(1, 1, 1, 1, 2, 2, 1)
    groups = (broadcast_to(rotation, shape[:2] + (rotated_groups,) + shape[3:]),
              broadcast_to(eye, shape[:2] + (1,) + shape[3:]))
    return tables._replace(rotation=ops.cat(groups, dim=2))


def apply_rotary_composite(x, tables: RotaryTables):
    """x [B, S, N, D] rotated by tables.rotation in stock's arithmetic (module docstring); N must be a
    multiple of the rotation's group count G."""
    batch, steps, heads, dim = x.shape
    groups = tables.rotation.shape[2]
    pairs = x.reshape(batch, steps, groups, heads // groups, 1, 2, dim // 2) * tables.rotation
    return pairs.sum(-2).reshape(batch, steps, heads, dim)


def apply_rotary_fused(x, tables: RotaryTables):
    """Ascend's RotaryPositionEmbedding, rotate_half mode, x [B, S, N, D] with BS1D tables (the layout
    its documentation allows at decode, where BNSD with B * N > 8S is refused)."""
    return mindspore.ops.rotary_position_embedding(x, tables.cos, tables.sin, 0)


def choose_rotary(dtype, heads: int, dim: int, groups: int = 1):
    """The rotation kernel for x [B, S, heads, dim] in `dtype` with tables of `groups` head groups:
    on Ascend the fused kernel only if it matches the composite bit for bit on this device (in bf16
    stock rounds after each multiply and after the add, which a fused kernel computing in fp32
    would not reproduce), else the composite. Call it before the first forward (a prepare pass).
    With an identity group (q, k and v together) the kernel rotates the leading groups and the
    kept group is appended unchanged."""
    if not device.fused_enabled():
        return apply_rotary_composite
    rotated_heads = heads - heads // groups if groups > 1 else heads

    def make_inputs():
        angles = ops.randn(2, 5, dim)
        return ops.randn(2, 5, rotated_heads, dim).to(dtype), make_tables(angles.cos().to(dtype), angles.sin().to(dtype))

    impl = device.choose(f"rotary_position_embedding/{dtype}/{rotated_heads}x{dim}",
                  apply_rotary_fused, apply_rotary_composite, make_inputs)
    if impl is apply_rotary_composite or groups == 1:
        return impl

    def fused_with_kept_group(x, tables):
        # the kernel takes one cos/sin for all heads: rotate the leading groups, append the kept one
        return ops.cat((apply_rotary_fused(x[:, :, :rotated_heads], tables), x[:, :, rotated_heads:]), dim=2)

    return fused_with_kept_group


def apply_rotary(x, tables: RotaryTables, kernel=apply_rotary_composite):
    """Rotate x [B, S, N, D] by the tables of RotaryEmbedding.forward with `kernel` (the composite,
    or what choose_rotary settled on).

    Every head is rotated alike, so q and k heads side by side in one x are rotated in one call,
    each exactly as alone.
    """
    batch, steps, heads, dim = x.shape
    rotation = tables.rotation.shape
    if rotation[:2] != (batch, steps) or 2 * rotation[-1] != dim or heads % rotation[2]:
        raise ValueError(f"rotary tables {tuple(tables.cos.shape)} do not fit x {tuple(x.shape)} "
                         f"(want tables [B, S, 1, D] for x [B, S, N, D], N a multiple of their head groups)")
    return kernel(x, tables)
