"""Dense layers against float64 NumPy references and, bit for bit, against stock mindnlp's modules (fp32/fp16)."""
import math
import numpy as np
import pytest
import mindspore
from mindspore import Tensor

from mindnlp.core import nn, ops
from mindnlp.transformers.cache_utils import DynamicCache
from mindnlp.transformers.models.llama import modeling_llama as llama
from mindnlp.transformers.models.llama.configuration_llama import LlamaConfig
from mindnlp.transformers.models.qwen2_moe import modeling_qwen2_moe as qwen2_moe
from mindnlp.transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
from mindnlp.transformers.models.qwen2_vl import modeling_qwen2_vl as qwen2_vl
from mindnlp.transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig

import counters
from mindnlp.accel import device
from mindnlp.accel.cache import StaticKVCache
from mindnlp.accel.layers import linear as linear_module
from mindnlp.accel.loading import hf_state_dict
from mindnlp.accel.layers.attention import choose_attention
from mindnlp.accel.layers import (Attention, FusedLinear, Linear, RMSNorm, RotaryEmbedding, apply_rotary, attend,
                                  attention_eager, build_attention_mask, with_identity_group)

F32 = mindspore.float32
F16 = mindspore.float16
# Left padding in row 0 of a batch of 2, as generate() pads a batch of prompts.
PADDED = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]], np.int32)


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(linear_module, "_FUSION_EXACT", {})  # every test checks fusion afresh
    device.reset_choices()
    yield
    device.reset_choices()


def tensor(array, dtype=F32):
    return Tensor(np.asarray(array), dtype)


def stock_positions(mask):
    """Position ids as stock generate() derives them from a left-padded attention mask."""
    positions = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)


def arange(n):
    return ops.arange(n, dtype=mindspore.int32)


def host(array):
    """A Tensor's values as a NumPy array; NumPy arrays pass through."""
    return array.asnumpy() if hasattr(array, "asnumpy") else np.asarray(array)


def assert_bits_equal(got, want):
    """Equal bit patterns: unlike assert_array_equal, +0 and -0 differ (and NaN equals itself)."""
    got, want = host(got), host(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = {2: np.uint16, 4: np.uint32}[got.itemsize]
    np.testing.assert_array_equal(got.view(bits), want.view(bits))


def assert_values_equal(got, want):
    """Equal values, exactly: the bits of every nonzero element, while +0 equals -0.

    The rotary composite sums its two products over an axis, and that sum starts from +0, so where
    both products are zeros of sign - it returns +0 and stock -0; nothing downstream can tell.
    """
    got, want = got.asnumpy(), want.asnumpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- RMSNorm

def set_weight(module, weight, dtype):
    module.load_state_dict({"weight": tensor(weight)})
    return module.half() if dtype == mindspore.float16 else module


def np_rms_norm(x, w, eps):
    x = x.astype(np.float64)
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


@pytest.mark.parametrize("stock_cls, kernel", [(qwen2_moe.Qwen2MoeRMSNorm, "composite"),
                                               (llama.LlamaRMSNorm, "stock_fused")])
@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
def test_rms_norm_is_stock(stock_cls, kernel, dtype):
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((2, 5, 32)) * 3, dtype)
    weight = rng.standard_normal(32).astype(np.float32)
    stock, ours = stock_cls(32, eps=1e-6), RMSNorm(32, eps=1e-6, kernel=kernel)
    for module in (stock, ours):
        set_weight(module, weight, dtype)
    got, want = ours(x), stock(x)
    assert got.dtype == want.dtype == dtype
    assert_bits_equal(got, want)


def test_rms_norm_matches_float64():
    rng = np.random.default_rng(1)
    x, weight = rng.standard_normal((3, 7, 64)), rng.standard_normal(64)
    norm = set_weight(RMSNorm(64, eps=1e-5), weight, F32)
    # float64 reference: fp32 rounding of the mean square, rsqrt and products, at most 1.9e-7 relative
    np.testing.assert_allclose(norm(tensor(x)).asnumpy(), np_rms_norm(x, weight, 1e-5), rtol=5e-7, atol=0)


def test_rms_norm_loads_stock_state_dict():
    stock = qwen2_moe.Qwen2MoeRMSNorm(16)
    ours = RMSNorm(16)
    assert list(ours.state_dict()) == list(stock.state_dict()) == ["weight"]


def test_rms_norm_checked_kernel_falls_back_where_fused_fails(monkeypatch):
    monkeypatch.setattr(device, "on_ascend", lambda: True)
    x = tensor(np.random.default_rng(2).standard_normal((2, 16)))
    norm, stock = RMSNorm(16, kernel="checked"), qwen2_moe.Qwen2MoeRMSNorm(16)
    with pytest.warns(RuntimeWarning, match="rms_norm"):
        norm.prepare_kernels(F32, 2)
    got = norm(x)
    assert_bits_equal(got, stock(x))


def test_rms_norm_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel"):
        RMSNorm(8, kernel="fast")


# ---------------------------------------------------------------- rotary

def np_rope(x, positions, head_dim, base):
    """x [B, S, N, D] rotated by float64 angles positions * base ** (-2i / D)."""
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)
    angles = positions[..., None].astype(np.float64) * inv_freq
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))
    half = head_dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


def rope_inputs(seed, heads=4, dim=16, dtype=F32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 9, heads, dim))
    return x, tensor(x, dtype), stock_positions(PADDED)


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
def test_rope_table_form_is_stock_qwen2_moe(dtype):
    _, x, positions = rope_inputs(0, dtype=dtype)
    rope = RotaryEmbedding(16, base=1e6, form="table", max_positions=64)
    tables = rope(tensor(positions, mindspore.int64), dtype)
    stock = qwen2_moe.Qwen2MoeRotaryEmbedding(16, max_position_embeddings=64, base=1e6)
    x_bnsd = x.swapaxes(1, 2)
    stock_cos, stock_sin = stock(x_bnsd, seq_len=9)
    want, _ = qwen2_moe.apply_rotary_pos_emb(x_bnsd, x_bnsd, stock_cos, stock_sin, tensor(positions, mindspore.int64))
    assert_bits_equal(apply_rotary(x, tables), want.swapaxes(1, 2))  # no zeros in x: bits equal


def test_rope_matmul_form_is_stock_llama():
    _, x, positions = rope_inputs(1)
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0)
    stock = llama.LlamaRotaryEmbedding(config=config)
    stock_cos, stock_sin = stock(x, tensor(positions, mindspore.int64))
    tables = RotaryEmbedding(16, base=10000.0)(tensor(positions, mindspore.int64), F32)
    assert_bits_equal(tables.cos[:, :, 0], stock_cos)
    assert_bits_equal(tables.sin[:, :, 0], stock_sin)
    x_bnsd = x.swapaxes(1, 2)
    want, _ = llama.apply_rotary_pos_emb(x_bnsd, x_bnsd, stock_cos, stock_sin)
    assert_bits_equal(apply_rotary(x, tables), want.swapaxes(1, 2))  # no zeros in x: bits equal


def test_mrope_is_stock_qwen2_vl():
    _, x, positions = rope_inputs(2)
    streams = np.stack([positions, positions // 2, positions % 3])  # three distinct streams
    section = [2, 3, 3]
    stock = qwen2_vl.Qwen2VLRotaryEmbedding(16, max_position_embeddings=64, base=10000.0)
    stock_cos, stock_sin = stock(x, tensor(streams, mindspore.int64))
    x_bnsd = x.swapaxes(1, 2)
    want, _ = qwen2_vl.apply_multimodal_rotary_pos_emb(x_bnsd, x_bnsd, stock_cos, stock_sin, section)
    tables = RotaryEmbedding(16, base=10000.0, mrope_section=section)(tensor(streams, mindspore.int64), F32)
    assert_bits_equal(apply_rotary(x, tables), want.swapaxes(1, 2))  # no zeros in x: bits equal


@pytest.mark.parametrize("form", ["table", "matmul"])
def test_rope_matches_float64(form):
    x_np, x, positions = rope_inputs(3)
    rope = RotaryEmbedding(16, base=10000.0, form=form, max_positions=32)
    tables = rope(tensor(positions, mindspore.int64), F32)
    # float64 reference: fp32 angles, cos/sin and products round; |out| < 3.5, differences at most 3.2e-7
    np.testing.assert_allclose(apply_rotary(x, tables).asnumpy(), np_rope(x_np, positions, 16, 10000.0),
                               rtol=0, atol=5e-7)


def test_mrope_equals_plain_rope_when_streams_agree():
    _, x, positions = rope_inputs(4)
    same = tensor(np.stack([positions] * 3), mindspore.int64)
    mrope = RotaryEmbedding(16, mrope_section=[2, 3, 3])(same, F32)
    plain = RotaryEmbedding(16)(tensor(positions, mindspore.int64), F32)
    for got, want in zip(mrope, plain):
        assert_bits_equal(got, want)


@pytest.mark.parametrize("kwargs, match", [({"form": "lookup"}, "form"),
                                           ({"form": "table"}, "max_positions"),
                                           ({"mrope_section": [2, 2, 2]}, "mrope_section")])
def test_rope_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotaryEmbedding(16, **kwargs)


def test_rope_rejects_mismatched_tables():
    _, x, positions = rope_inputs(5)
    tables = RotaryEmbedding(16)(tensor(positions[:, :4], mindspore.int64), F32)
    with pytest.raises(ValueError, match="rotary tables"):
        apply_rotary(x, tables)


@pytest.mark.parametrize("dtype", [F32, F16])
def test_joint_rotary_of_q_and_k_is_stock_on_each(dtype):
    """q and k heads rotated in one call equal stock's rotation of each, zeros included."""
    rng = np.random.default_rng(13)
    q, k = rng.standard_normal((2, 9, 4, 16)), rng.standard_normal((2, 9, 2, 16))
    q[0, :, 0, :3], k[1, :, 1, 8:11] = 0.0, -0.0  # zeros in both halves: rotate_half negates them
    positions = tensor(stock_positions(PADDED), mindspore.int64)
    q, k = tensor(q, dtype), tensor(k, dtype)
    tables = RotaryEmbedding(16, base=1e6, form="table", max_positions=64)(positions, dtype)
    joint = apply_rotary(ops.cat((q, k), dim=2), tables)
    stock = qwen2_moe.Qwen2MoeRotaryEmbedding(16, max_position_embeddings=64, base=1e6)
    cos, sin = stock(q, seq_len=9)
    want_q, want_k = qwen2_moe.apply_rotary_pos_emb(q.swapaxes(1, 2), k.swapaxes(1, 2), cos.to(dtype),
                                                    sin.to(dtype), positions)
    assert_bits_equal(joint[:, :, :4], want_q.swapaxes(1, 2))  # q's zeros are +0: its sums give +0 either way
    # k's -0 at position 0 (sin 0): where the paired first-half element is negative both products
    # are -0, so stock returns -0 and our sum +0 (2 elements): values equal, signs of zero not.
    assert_values_equal(joint[:, :, 4:], want_k.swapaxes(1, 2))
    assert_bits_equal(joint[:, :, 4:], apply_rotary(k, tables))


def test_rotation_table_holds_cos_and_signed_sin_per_half():
    tables = RotaryEmbedding(16)(tensor(stock_positions(PADDED), mindspore.int64), F32)
    cos, sin = tables.cos.asnumpy()[:, :, 0], tables.sin.asnumpy()[:, :, 0]
    rotation = tables.rotation.asnumpy()
    assert rotation.shape == (2, 9, 1, 1, 2, 2, 8)
    rotation = rotation[:, :, 0, 0]
    assert_bits_equal(rotation[:, :, 0, 0], cos[..., :8])
    assert_bits_equal(rotation[:, :, 0, 1], -sin[..., :8])
    assert_bits_equal(rotation[:, :, 1, 0], sin[..., 8:])
    assert_bits_equal(rotation[:, :, 1, 1], cos[..., 8:])


@pytest.mark.parametrize("dtype", [F32, F16])
def test_identity_group_rotates_q_and_k_and_keeps_v(dtype):
    rng = np.random.default_rng(14)
    qkv = tensor(rng.standard_normal((2, 9, 4 + 2 + 2, 16)), dtype)  # GQA 4/2: q, k, v heads
    tables = RotaryEmbedding(16, base=1e6, form="table", max_positions=64)(
        tensor(stock_positions(PADDED), mindspore.int64), dtype)
    joint = apply_rotary(qkv, with_identity_group(tables, 4 // 2 + 1))
    assert_bits_equal(joint[:, :, :6], apply_rotary(qkv[:, :, :6], tables))
    assert_bits_equal(joint[:, :, 6:], qkv[:, :, 6:])


@pytest.mark.parametrize("form", ["table", "matmul"])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_grouped_tables_are_the_identity_group_tables(form, dtype):
    """The table form gathers every position's tables from rows built once: the same values as
    building them per forward, for a prompt and for one decode position, in either dtype."""
    rope = RotaryEmbedding(16, base=1e6, form=form, max_positions=64)
    for positions in (stock_positions(PADDED), [[11], [40]]):
        ids = tensor(positions, mindspore.int64)
        built = with_identity_group(rope(ids, dtype), 3)
        gathered = rope.grouped(ids, dtype, 3)
        for got, want in zip(gathered, built):
            assert got.shape == want.shape
            assert_bits_equal(got, want)
    assert len(rope._position_rows) == (1 if form == "table" else 0)


def test_grouped_rows_follow_a_cast_of_the_module():
    """Rows built before the module's tables were cast (fp32 -> fp16 -> fp32 rounds them) are
    rebuilt from the tables forward reads, not reused."""
    rope = RotaryEmbedding(16, base=1e6, form="table", max_positions=64)
    ids = tensor(stock_positions(PADDED), mindspore.int64)
    exact = rope.grouped(ids, F32, 3)
    rope.to(F16).to(F32)
    built = with_identity_group(rope(ids, F32), 3)
    for got, want in zip(rope.grouped(ids, F32, 3), built):
        assert_bits_equal(got, want)
    assert not np.array_equal(exact.cos.asnumpy(), built.cos.asnumpy())


# ---------------------------------------------------------------- Linear

@pytest.mark.parametrize("shape", [(1, 48), (3, 5, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_is_bitwise_stock(shape, bias):
    ours = Linear(48, 40, bias=bias)
    stock = nn.Linear(48, 40, bias=bias)
    stock.load_state_dict(ours.state_dict())
    x = tensor(np.random.default_rng(6).standard_normal(shape))
    assert_bits_equal(ours(x), stock(x))


def test_linear_follows_reloaded_weights():
    ours, stock = Linear(8, 6), nn.Linear(8, 6)
    x = tensor(np.random.default_rng(7).standard_normal((2, 8)))
    ours(x)  # builds the transposed copy
    stock.load_state_dict({k: v * 3 for k, v in ours.state_dict().items()})
    ours.load_state_dict(stock.state_dict())
    assert_bits_equal(ours(x), stock(x))


def test_linear_prepared_for_the_cpu_keeps_stock_state():
    """The transposed copy and the weight it was made from are no parameters: a save writes only
    stock's tensors (a Parameter held as an attribute would be saved as a second one)."""
    ours = Linear(8, 6)
    ours.prepare_kernels(mindspore.float32, 1)
    assert list(ours.state_dict()) == list(nn.Linear(8, 6).state_dict()) == ["weight", "bias"]


def stock_projections(hidden, widths, dtype, bias=True):
    """Separate stock nn.Linear layers with random weights, and their state stacked by rows."""
    rng = np.random.default_rng(sum(widths))
    layers, state = [], {"weight": [], "bias": []}
    for width in widths:
        layer = nn.Linear(hidden, width, bias=bias)
        weights = {"weight": rng.standard_normal((width, hidden)) / np.sqrt(hidden)}
        if bias:
            weights["bias"] = rng.standard_normal(width)
        layer.load_state_dict({k: tensor(v) for k, v in weights.items()})
        layers.append(layer.half() if dtype == F16 else layer)
        for k, v in weights.items():
            state[k].append(v)
    return layers, {k: tensor(np.concatenate(v)) for k, v in state.items() if v}


# (1536, (1536, 256, 256)) is Qwen2-VL's q, k, v: for one fp32 row the CPU backend sums the 256-wide
# products in another order than the 2048-wide fused one, so there FusedLinear must run per block.
@pytest.mark.parametrize("hidden, widths", [(64, (64, 32, 32)), (1536, (1536, 256, 256))])
@pytest.mark.parametrize("tokens", [1, 9])
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_projection_is_the_separate_stock_projections(hidden, widths, tokens, dtype, bias):
    stocks, state = stock_projections(hidden, widths, dtype, bias)
    fused = FusedLinear(hidden, widths, bias=bias)
    fused.load_state_dict(state)
    if dtype == F16:
        fused = fused.half()
    fused.prepare_kernels(dtype, tokens)
    x = tensor(np.random.default_rng(14).standard_normal((1, tokens, hidden)), dtype)
    assert_bits_equal(fused(x), ops.cat([layer(x) for layer in stocks], dim=-1))


class _Decided(dict):
    """A fusion memo whose every entry is already decided: forces one path of FusedLinear."""

    def __init__(self, exact):
        super().__init__()
        self.exact = exact

    def __contains__(self, key):
        return True

    def __getitem__(self, key):
        return self.exact


@pytest.mark.parametrize("exact", [True, False])
def test_fused_projection_paths_both_equal_stock(monkeypatch, exact):
    monkeypatch.setattr(linear_module, "_FUSION_EXACT", _Decided(exact))
    stocks, state = stock_projections(48, (48, 16, 16), F32)
    fused = FusedLinear(48, (48, 16, 16))
    fused.load_state_dict(state)
    x = tensor(np.random.default_rng(15).standard_normal((2, 3, 48)))
    assert_bits_equal(fused(x), ops.cat([layer(x) for layer in stocks], dim=-1))


# ---------------------------------------------------------------- attention core

def np_attention(q, k, v, visible):
    """float64 reference with K/V repeated per query head: q [B, N, S, D], k/v [B, KV, T, D]."""
    groups = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    scores = np.where(visible, scores, np.finfo(np.float64).min)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ v


def test_gqa_equals_repeated_kv_reference():
    rng = np.random.default_rng(8)
    q, k, v = rng.standard_normal((2, 6, 9, 8)), rng.standard_normal((2, 2, 9, 8)), rng.standard_normal((2, 2, 9, 8))
    mask = build_attention_mask(tensor(PADDED, mindspore.int32), arange(9), F32)
    got = attention_eager(tensor(q), tensor(k), tensor(v), mask).asnumpy()
    visible = ~mask.hidden.asnumpy()
    want = np_attention(q, k, v, visible)
    # Padding queries see no key at all; stock and we return the mean of V there, nothing to check.
    real = np.broadcast_to(PADDED.astype(bool)[:, None, :], got.shape[:3])
    # float64 reference: fp32 scores, softmax and sums round; |out| < 2.4, differences at most 9.3e-7
    np.testing.assert_allclose(got[real], want[real], rtol=0, atol=2e-6)


def test_mask_is_stock_causal_padding_mask():
    # stock's hidden value is mindnlp's finfo min, which the 0.4 branch rounds (-3.40282e38)
    hidden = float(ops.finfo(F32).min)
    stock = qwen2_moe._prepare_4d_causal_attention_mask_with_cache_position(
        tensor(PADDED, mindspore.int64), 9, 9, F32, hidden, ops.arange(9), 2)
    ours = build_attention_mask(tensor(PADDED, mindspore.int32), arange(9), F32).additive
    assert_bits_equal(ours, stock)


def test_attend_rejects_mask_of_wrong_length():
    q, kv = ops.randn(1, 2, 3, 8), ops.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="mask"):
        attend(q, kv, kv, build_attention_mask(ops.ones((1, 3), dtype=mindspore.int32), arange(3), F32))


@pytest.mark.parametrize("steps, kernel", [(9, "attention_prefill_fused"), (1, "attention_decode_fused")])
def test_fused_attention_falls_back_to_eager_where_kernel_fails(monkeypatch, steps, kernel):
    monkeypatch.setattr(device, "on_ascend", lambda: True)
    f16 = mindspore.float16
    q, k, v = (ops.randn(2, heads, length, 16).to(f16) for heads, length in ((4, steps), (2, 9), (2, 9)))
    mask = build_attention_mask(tensor(PADDED, mindspore.int32), ops.arange(9 - steps, 9, dtype=mindspore.int32), f16)
    monkeypatch.setenv(device.INEXACT_ENV, "1")
    with pytest.warns(RuntimeWarning, match=kernel):
        chosen = choose_attention(steps == 1, 4, 2, 16, f16)
    assert chosen is attention_eager
    got = attend(q, k, v, mask, chosen)
    assert_bits_equal(got, attention_eager(q, k, v, mask))


@pytest.mark.parametrize("decode, dim, dtype", [(False, 16, F32), (True, 16, F32), (False, 8, mindspore.float16),
                                                (False, 528, mindspore.float16)])
def test_fused_attention_is_not_tried_outside_its_documented_inputs(monkeypatch, recwarn, decode, dim, dtype):
    """Both kernels take float16/bfloat16 only; flash_attention_score needs head_dim % 16 == 0, <= 512."""
    monkeypatch.setattr(device, "on_ascend", lambda: True)
    assert choose_attention(decode, 4, 2, dim, dtype) is attention_eager
    assert not [w for w in recwarn if "fused kernel" in str(w.message)]
    assert device.decisions() == {}


# ---------------------------------------------------------------- attention module vs stock

def copy_weights(ours, stock):
    ours.load_state_dict({k: v for k, v in stock.state_dict().items() if "rotary" not in k})


def stock_mask(mask2d, module=qwen2_moe, dtype=F32):
    length = mask2d.shape[1]
    return module._prepare_4d_causal_attention_mask_with_cache_position(
        tensor(mask2d, mindspore.int64), length, length, dtype, float(ops.finfo(dtype).min),
        ops.arange(length), mask2d.shape[0])


def hidden_states(seed, width):
    return tensor(np.random.default_rng(seed).standard_normal((2, 9, width)))


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
def test_attention_is_stock_qwen2_moe(dtype):
    config = Qwen2MoeConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                            max_position_embeddings=64, rope_theta=1e6)
    stock = qwen2_moe.Qwen2MoeAttention(config, layer_idx=0)
    ours = Attention(64, 4, 4, qkv_bias=True)
    copy_weights(ours, stock)
    if dtype == mindspore.float16:
        stock, ours = stock.half(), ours.half()
    x, positions = hidden_states(9, 64).astype(dtype), tensor(stock_positions(PADDED), mindspore.int64)
    want = stock(x, attention_mask=stock_mask(PADDED, dtype=dtype), position_ids=positions)[0]
    rope = RotaryEmbedding(16, base=1e6, form="table", max_positions=64)
    got = ours(x, rope(positions, dtype), build_attention_mask(tensor(PADDED, mindspore.int32), arange(9), dtype))
    assert got.dtype == want.dtype == dtype
    assert_bits_equal(got, want)


def test_attention_is_stock_llama_gqa():
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    stock = llama.LlamaAttention(config, layer_idx=0)
    ours = Attention(64, 4, 2)
    copy_weights(ours, stock)
    x, positions = hidden_states(10, 64), tensor(stock_positions(PADDED), mindspore.int64)
    cos, sin = llama.LlamaRotaryEmbedding(config=config)(x, positions)
    want = stock(x, attention_mask=stock_mask(PADDED, llama), position_embeddings=(cos, sin))[0]
    got = ours(x, RotaryEmbedding(16)(positions, F32),
               build_attention_mask(tensor(PADDED, mindspore.int32), arange(9), F32))
    assert_bits_equal(got, want)


@pytest.mark.parametrize("steps,keys,dim,heads,kv_heads", [(1, 9, 16, 4, 2), (7, 7, 16, 4, 2), (1, 40, 128, 12, 2)])
def test_gqa_attention_core_is_stocks_at_decode_and_short_prompts(steps, keys, dim, heads, kv_heads):
    """Stock's core: repeat_kv, q @ k^T / sqrt(D), + mask, fp32 softmax, @ v. At these shapes the CPU
    matmul sums differently when the query heads of a KV head share one matmul (more rows), so an
    implementation that grouped them instead of repeating K/V fails here."""
    rng = np.random.default_rng(steps * 100 + dim)
    q = tensor(rng.standard_normal((2, heads, steps, dim)))
    k, v = (tensor(rng.standard_normal((2, kv_heads, keys, dim))) for _ in range(2))
    valid = np.ones((2, keys), np.int32)
    valid[0, 0] = 0
    mask = build_attention_mask(tensor(valid, mindspore.int32), arange(keys)[keys - steps:], F32)
    groups = heads // kv_heads
    scores = ops.matmul(q, llama.repeat_kv(k, groups).swapaxes(2, 3)) / math.sqrt(dim) + mask.additive
    probs = nn.functional.softmax(scores, dim=-1, dtype=mindspore.float32).to(q.dtype)
    want = ops.matmul(probs, llama.repeat_kv(v, groups))
    assert_bits_equal(attend(q, k, v, mask), want)


def test_attention_is_stock_qwen2_vl_mrope_gqa():
    section = [2, 3, 3]
    config = Qwen2VLConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                           max_position_embeddings=64, rope_scaling={"type": "mrope", "mrope_section": section})
    stock = qwen2_vl.Qwen2VLAttention(config, layer_idx=0)
    ours = Attention(96, 6, 2, qkv_bias=True)
    copy_weights(ours, stock)
    x = hidden_states(11, 96)
    positions = stock_positions(PADDED)
    streams = tensor(np.stack([positions, positions // 2, positions % 3]), mindspore.int64)
    cos, sin = stock.rotary_emb(x, streams)
    want = stock(x, attention_mask=stock_mask(PADDED, qwen2_vl), position_embeddings=(cos, sin))[0]
    rope = RotaryEmbedding(16, base=config.rope_theta, mrope_section=section)
    got = ours(x, rope(streams, F32), build_attention_mask(tensor(PADDED, mindspore.int32), arange(9), F32))
    assert_bits_equal(got, want)


# ---------------------------------------------------------------- fused q/k/v under Hugging Face names

class Block(nn.Module):
    """Attention under a prefix, as in a decoder layer."""

    def __init__(self):
        super().__init__()
        self.self_attn = Attention(64, 4, 2, qkv_bias=True)


def stock_block_state():
    config = Qwen2MoeConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64)
    stock = qwen2_moe.Qwen2MoeAttention(config, layer_idx=0)
    return {f"self_attn.{k}": v for k, v in stock.state_dict().items() if "rotary" not in k}


def block_output(block):
    x, positions = hidden_states(16, 64), tensor(stock_positions(PADDED), mindspore.int64)
    rope = RotaryEmbedding(16, form="table", max_positions=64)
    return block.self_attn(x, rope(positions, F32),
                           build_attention_mask(tensor(PADDED, mindspore.int32), arange(9), F32))


def test_hf_projections_load_into_their_qkv_rows():
    state = stock_block_state()
    block = Block()
    block.load_state_dict(state)
    for kind in ("weight", "bias"):
        want = ops.cat([state[f"self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
        assert_bits_equal(getattr(block.self_attn.qkv_proj, kind), want)


@pytest.mark.parametrize("dropped", ["self_attn.k_proj.weight", "self_attn.v_proj.bias"])
def test_missing_projection_is_an_error_naming_it(dropped):
    state = {k: v for k, v in stock_block_state().items() if k != dropped}
    with pytest.raises(RuntimeError, match="Missing key") as error:
        Block().load_state_dict(state)
    assert f'"{dropped}"' in str(error.value) and "qkv_proj" not in str(error.value)
    assert Block().load_state_dict(state, strict=False).missing_keys == [dropped]


def test_fused_attention_saves_and_reloads_in_both_namings():
    state = stock_block_state()
    block = Block()
    block.load_state_dict(state)
    want = block_output(block)
    saved = hf_state_dict(block)
    assert sorted(saved) == sorted(state)
    for key, value in saved.items():
        assert_bits_equal(value, state[key])
    for reload in (saved, block.state_dict()):  # Hugging Face names, then our own (qkv_proj.*)
        fresh = Block()
        fresh.load_state_dict(reload)
        assert_bits_equal(block_output(fresh), want)


def test_reloading_refreshes_the_fused_projection():
    state = stock_block_state()
    block = Block()
    device.prepare_kernels(block, F32, 1)  # builds the CPU transposed copies
    block_output(block)
    block.load_state_dict(state)
    device.prepare_kernels(block, F32, 1)
    fresh = Block()
    fresh.load_state_dict(state)
    assert_bits_equal(block_output(block), block_output(fresh))


def test_decode_step_launches_one_projection_matmul_one_rotation_and_one_cache_write():
    attn = Attention(64, 4, 4, qkv_bias=True)
    rope = RotaryEmbedding(16, form="table", max_positions=32)
    cache = StaticKVCache(1, 1, 4, 8, 16)
    x = tensor(np.random.default_rng(17).standard_normal((1, 1, 64)))
    device.prepare_kernels(attn, F32, 1)  # decides the projection's fusion, makes the CPU weight copies
    for t in range(2):
        where = cache.prepare(ops.arange(t, t + 1, dtype=mindspore.int32))
        tables = with_identity_group(rope(tensor([[t]], mindspore.int64), F32), attn.rotated_groups)
        mask = build_attention_mask(ops.ones((1, 8), dtype=mindspore.int32), where.slots, F32)
        with counters.count_region() as region:
            attn(x, tables, mask, cache, where)
    launched = region.counts.steps[0].ops
    # q/k/v and o_proj; q, k and v rotated by one Mul and one sum; keys and values in one write
    assert (launched["MatMul"], launched["Mul"], launched["ReduceSum"], launched["ScatterUpdate"]) == (2, 1, 1, 1)
    assert launched["Concat"] == launched["Neg"] == 0


# ---------------------------------------------------------------- decode over the static cache

@pytest.mark.parametrize("fixed_shape", [True, False])
def test_decode_over_static_cache_equals_stock_over_its_dynamic_cache(fixed_shape):
    """Prefill 6 tokens into the cache, decode 3 one at a time, as stock's Qwen2MoeAttention does over
    a DynamicCache with its per-step masks (GQA 6/2). A one-token step is not bit-identical to the
    same row of a longer prefill on the CPU backend (the matmul sums a short row differently), so
    the reference is stock's own step sequence."""
    prompt, total, max_len = 6, 9, 12
    config = Qwen2MoeConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                            max_position_embeddings=32, rope_theta=10000.0)
    stock = qwen2_moe.Qwen2MoeAttention(config, layer_idx=0)
    attn = Attention(48, 6, 2, qkv_bias=True)
    copy_weights(attn, stock)
    rope = RotaryEmbedding(8, form="table", max_positions=32)
    x = tensor(np.random.default_rng(12).standard_normal((2, total, 48)))
    positions = tensor(stock_positions(PADDED), mindspore.int64)

    cache, stock_cache = StaticKVCache(1, 2, 2, max_len, 8), DynamicCache()
    # The caller's mask over the whole cache, as the model passes it: padding 0, every later slot 1.
    cache_mask = np.concatenate([PADDED, np.ones((2, max_len - total), PADDED.dtype)], axis=1)
    got, want = [], []
    for start, stop in [(0, prompt)] + [(t, t + 1) for t in range(prompt, total)]:
        slots = ops.arange(start, stop, dtype=mindspore.int32)
        stock_step_mask = qwen2_moe._prepare_4d_causal_attention_mask_with_cache_position(
            tensor(PADDED[:, :stop], mindspore.int64), stop - start, stop, F32, float(ops.finfo(F32).min),
            ops.arange(start, stop), 2)
        want.append(stock(x[:, start:stop], attention_mask=stock_step_mask, position_ids=positions[:, start:stop],
                          past_key_value=stock_cache, cache_position=ops.arange(start, stop))[0].asnumpy())
        where = cache.prepare(slots)
        kv_len = None if fixed_shape else stop
        mask = build_attention_mask(tensor(cache_mask[:, :kv_len], mindspore.int32), where.slots, F32)
        got.append(attn(x[:, start:stop], rope(positions[:, start:stop], F32), mask, cache=cache,
                        cache_write=where, kv_len=kv_len).asnumpy())
    got, want = np.concatenate(got, axis=1), np.concatenate(want, axis=1)
    real = PADDED[0].astype(bool)  # padding queries of row 0 attend to nothing; compare real ones
    if fixed_shape:
        # over the whole cache the keys past kv_len are masked zeros, which change the kernels'
        # blocking and so the last bits (generation.py says why the model passes kv_len)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[0, real], want[0, real], rtol=1e-6, atol=1e-6)
    else:
        assert_bits_equal(got[1], want[1])
        assert_bits_equal(got[0, real], want[0, real])


def test_attention_with_cache_needs_write_index():
    attn = Attention(16, 2)
    cache = StaticKVCache(1, 1, 2, 4, 8)
    x = ops.randn(1, 1, 16)
    tables = RotaryEmbedding(8)(ops.zeros((1, 1), dtype=mindspore.int64), F32)
    with pytest.raises(ValueError, match="cache_write"):
        attn(x, tables, build_attention_mask(ops.ones((1, 4), dtype=mindspore.int32), arange(1), F32),
             cache=cache)


def test_attention_rejects_bad_head_counts():
    with pytest.raises(ValueError, match="multiple"):
        Attention(64, 4, 3)


@pytest.mark.parametrize("dtype", [F32, mindspore.float16])
@pytest.mark.parametrize("value", [math.sqrt(128), math.sqrt(4), 3.0, math.sqrt(2.828125)])
def test_divide_is_stocks_division_by_a_python_number(dtype, value):
    from mindnlp.accel.layers.primitives import divide

    x = tensor(np.random.default_rng(4).standard_normal((2, 3, 5, 7)) * 30, dtype)
    assert_bits_equal(divide(x, value), x / value)
