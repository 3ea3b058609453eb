"""Causal self-attention for prefill and decode over a static cache; GQA as stock computes it.

Numerics of the default (eager) path are stock's eager attention, op for op: scores = q @ k^T in
the activation dtype, divided (not multiplied) by sqrt(head_dim) after the matmul, plus an additive
mask holding 0 or the dtype's min, softmax in fp32, cast back, then @ v. With grouped KV heads the
eager path repeats K and V to every query head, as stock's repeat_kv does, so each matmul has
stock's shape: grouping the query heads instead ([B, kv_heads, groups * S, D] against unrepeated
K/V) changes the rows of each matmul, and the CPU kernels sum a dot product in another order when
the row count is small (one decode step, a short prompt), so it is not bit-identical to stock
(tests/test_layers_dense.py). The fused Ascend kernels (flash_attention_score for prefill,
incre_flash_attention for decode) compute the softmax differently, so the self-check never finds
them bit-identical: they are used only with MINDNLP_ACCEL_INEXACT=1 (device.choose) and after the
self-check agrees.
"""
import math
from typing import NamedTuple, Optional

import mindspore
from mindspore import Tensor
from mindnlp.core import ops

from .. import device
from ..loading import SlotLoadedModule, qkv_slots
from .linear import FusedLinear, Linear
from .primitives import batch_matmul, broadcast_to, divide, narrow, softmax_last
from .rotary import RotaryTables, apply_rotary, apply_rotary_composite, choose_rotary, with_identity_group

# The self-check of a fused attention kernel looks for wrong layouts, masks or scales (errors of
# order 1), not for bit parity, which fused kernels do not have: bf16 outputs agree to about 1e-2.
FUSED_ATOL = 2e-2
FUSED_RTOL = 2e-2


class AttentionMask(NamedTuple):
    """One mask in the two forms the kernels take, both [B, 1, S, T] (`additive` may be
    [B, heads, S, T], see per_head)."""
    additive: Tensor  # activation dtype: 0 where visible, the dtype's min where hidden (stock's form)
    hidden: Tensor  # bool: True where hidden (the fused kernels' form)

    def per_head(self, heads: int) -> "AttentionMask":
        """The mask with `additive` repeated for `heads` heads, once per forward: the same sums in
        every layer, but the CPU backend's Add is 4 to 6x slower when it broadcasts the mask over the
        heads (`python eval/bench_kernels.py`: 168 against 42 ms for 32 heads x 620 x 620 fp32).
        Costs B * heads * S * T elements for the forward; the model uses it for prompts only
        (a decode step's mask is one row per sequence)."""
        batch, _, steps, length = self.additive.shape
        full = broadcast_to(self.additive, (batch, heads, steps, length)).contiguous()
        return self._replace(additive=full)


def build_attention_mask(valid: Tensor, query_slots: Tensor, dtype) -> AttentionMask:
    """Causal + padding mask, built once per forward and shared by all layers.

    valid: [B, T], nonzero where key slot t holds a real token (0 for padding or empty slots).
    query_slots: int [S], the slot of each query. Query i sees key t iff valid[b, t] and t <= slot i.
    For a prompt alone, pass the 2-D attention_mask and arange(S); for decode over a static cache,
    the padded attention mask over the cache's slots and the current slot (see decoder_mask).
    """
    batch, length = valid.shape
    steps = query_slots.shape[0]
    key_slots = ops.arange(length, dtype=mindspore.int32).reshape(1, length)
    causal = key_slots <= query_slots.astype(mindspore.int32).reshape(steps, 1)
    visible = ops.logical_and((valid != 0).reshape(batch, 1, 1, length), causal.reshape(1, 1, steps, length))
    hidden = ops.logical_not(visible)
    additive = ops.masked_fill(ops.zeros((batch, 1, steps, length), dtype=dtype), hidden,
                               float(ops.finfo(dtype).min))
    return AttentionMask(additive, hidden)


def decoder_mask(attention_mask: Optional[Tensor], batch: int, query_slots: Tensor, length: int,
                 kv_len: Optional[int], dtype) -> Optional[AttentionMask]:
    """The mask a decoder's layers share for one forward, or None where it would hide nothing.

    attention_mask: [B, length] (1 real, 0 padding) or None for no padding; `length` is the cache's
    (or, without a cache, the prompt's). With `kv_len` the keys are the first kv_len slots. One
    query over exactly the filled slots, with no padding, sees every key: no mask is built.
    """
    steps = query_slots.shape[0]
    if attention_mask is None:
        if steps == 1 and kv_len is not None:
            return None
        attention_mask = ops.ones((batch, length), mindspore.int32)
    valid = narrow(attention_mask, 1, 0, kv_len) if kv_len is not None else attention_mask
    return build_attention_mask(valid, query_slots, dtype)


def attention_eager(q, k, v, mask: Optional[AttentionMask]):
    """q [B, N, S, D], k/v [B, KV, T, D] (N a multiple of KV) -> [B, N, S, D], stock's arithmetic.

    mask None: every key is visible to every query; stock adds a mask of zeros there, which changes
    no score (s + 0 == s), so the add is skipped."""
    dim = q.shape[-1]
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    scores = divide(batch_matmul(q, k.swapaxes(2, 3)), math.sqrt(dim))
    if mask is not None:
        scores = scores + mask.additive
    probs = softmax_last(scores, mindspore.float32).to(q.dtype)
    return batch_matmul(probs, v)


def repeat_kv(x, heads: int):
    """x [B, KV, T, D] with KV head j repeated for query heads j * groups ... (j + 1) * groups - 1:
    [B, heads, T, D], as stock's repeat_kv (x itself when KV == heads)."""
    batch, kv_heads, length, dim = x.shape
    if kv_heads == heads:
        return x
    groups = heads // kv_heads
    return broadcast_to(x.unsqueeze(2), (batch, kv_heads, groups, length, dim)).reshape(batch, heads, length, dim)


def attention_prefill_fused(q, k, v, mask: AttentionMask):
    """Ascend FlashAttentionScore, BNSD, scale 1/sqrt(D) inside the kernel; native GQA.

    Stock LLM attention divides the bf16 scores after the matmul, which no placement of the scale
    in this kernel reproduces exactly. (Pre-scaling q and k by D ** -0.25 matched stock only in
    vision towers whose stock code itself pre-scales both, such as Janus's SigLIP.)
    """
    return mindspore.ops.flash_attention_score(
        q, k, v, q.shape[1], attn_mask=mask.hidden, scalar_value=1.0 / math.sqrt(q.shape[-1]),
        input_layout="BNSD")


def attention_decode_fused(q, k, v, mask: AttentionMask):
    """Ascend IncreFlashAttention for one query step over the whole cache, BNSD; native GQA."""
    return mindspore.ops.incre_flash_attention(
        q, [k], [v], attn_mask=None if mask is None else mask.hidden, num_heads=q.shape[1], input_layout="BNSD",
        scale_value=1.0 / math.sqrt(q.shape[-1]), num_key_value_heads=k.shape[1])


def attend(q, k, v, mask: Optional[AttentionMask], kernel=attention_eager):
    """Attention core with `kernel` (the eager path, or what choose_attention settled on).
    mask None: all keys visible (a single decode query over exactly the filled cache, no padding)."""
    if mask is None:
        if q.shape[2] != 1:
            raise ValueError("attention without a mask is for one query step; a prompt needs its causal mask")
    elif mask.additive.shape[-2:] != (q.shape[2], k.shape[2]):
        raise ValueError(f"mask {tuple(mask.additive.shape)} does not fit {q.shape[2]} queries "
                         f"over {k.shape[2]} keys")
    return kernel(q, k, v, mask)


def fused_attention_fits(decode: bool, dim: int, dtype) -> bool:
    """Whether the MindSpore 2.6 documentation admits the fused kernel for these inputs: both take
    float16 or bfloat16 only; flash_attention_score also needs head_dim a multiple of 16, at most 512."""
    if dtype not in (mindspore.float16, mindspore.bfloat16):
        return False
    return decode or (dim % 16 == 0 and dim <= 512)


def choose_attention(decode: bool, heads: int, kv_heads: int, dim: int, dtype):
    """The attention kernel for decode (one query step) or prefill: the fused Ascend kernel where
    its documented constraints admit the inputs and device.choose accepts it (see the module
    docstring), else the eager path."""
    if not device.fused_enabled() or not fused_attention_fits(decode, dim, dtype):
        return attention_eager
    kernel = attention_decode_fused if decode else attention_prefill_fused
    name = f"{kernel.__name__}/{dtype}/{heads}x{kv_heads}x{dim}"
    return device.choose(name, kernel, attention_eager, lambda: _check_inputs(decode, heads, kv_heads, dim, dtype),
                         atol=FUSED_ATOL, rtol=FUSED_RTOL)


def _check_inputs(decode: bool, heads: int, kv_heads: int, dim: int, dtype):
    """Small inputs for the self-check. Decode has a padded slot 0; prefill is causal only, since a
    fully hidden query row (left padding) has no defined answer and the kernels legitimately differ."""
    length = 16
    steps = 1 if decode else length
    q = ops.randn(2, heads, steps, dim).to(dtype)
    k = ops.randn(2, kv_heads, length, dim).to(dtype)
    v = ops.randn(2, kv_heads, length, dim).to(dtype)
    valid = ops.ones((2, length), dtype=mindspore.int32)
    if decode:
        valid[0, 0] = 0
        slots = Tensor([length - 1], mindspore.int32)
    else:
        slots = ops.arange(length, dtype=mindspore.int32)
    return q, k, v, build_attention_mask(valid, slots, dtype)


def heads_first(x):
    """[B, S, N, D] <-> [B, N, S, D]. For one step (S == 1) both hold the same memory, so a reshape
    does it without the strided view a transpose leaves for the next op to copy."""
    batch, first, second, dim = x.shape
    if first == 1 or second == 1:
        return x.reshape(batch, second, first, dim)
    return x.swapaxes(1, 2)


class Attention(SlotLoadedModule):
    """Rotary self-attention with q, k, v projected by one matmul and rotated by one call.

    Checkpoint names are Hugging Face's: q_proj, k_proj, v_proj (weight, and bias with qkv_bias)
    load into their row blocks of `qkv_proj` and are saved under those names again by
    loading.hf_state_dict; o_proj is a plain Linear.
    forward(hidden_states [B, S, hidden], rope RotaryTables (RotaryEmbedding, then once per forward
            with_identity_group(tables, rotated_groups); plain tables are converted per call),
            mask AttentionMask [B, 1, S, T] (or None, see attend), cache StaticKVCache or None, cache_write CacheWrite,
            kv_len host int or None) -> [B, S, hidden].
    Without a cache the queries attend to their own keys (T = S). With one, this step's keys and
    values are written at cache_write.slots and the queries attend to the cache's first kv_len
    slots (all max_len if None; T must match the mask).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, qkv_bias: bool = False, o_bias: bool = False,
                 layer_idx: int = 0):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        head_dim = head_dim or hidden_size // num_heads
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_idx = layer_idx
        self._rotary = {}  # dtype -> rotary kernel (prepare_kernels)
        self._attend = {}  # (dtype, one query step) -> attention kernel (prepare_kernels)
        q_rows, kv_rows = num_heads * head_dim, num_kv_heads * head_dim
        self.checkpoint_slots = qkv_slots(q_rows, kv_rows, qkv_bias)
        # Weight rows [q; k; v], stock's [out, in] layout: each output is the dot product stock's
        # separate projection computes (FusedLinear checks the kernel sums it alike).
        self.qkv_proj = FusedLinear(hidden_size, (q_rows, kv_rows, kv_rows), bias=qkv_bias)
        self.o_proj = Linear(num_heads * head_dim, hidden_size, bias=o_bias)

    @property
    def rotated_groups(self) -> int:
        """Head groups (of num_kv_heads heads) that rotary rotates: the query heads, then the keys."""
        return self.num_heads // self.num_kv_heads + 1

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        """Settle the rotary and attention kernels for `dtype` (before the first forward)."""
        if dtype in self._rotary:
            return
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        self._rotary[dtype] = choose_rotary(dtype, heads + 2 * kv_heads, dim, self.rotated_groups + 1)
        for decode in (False, True):
            self._attend[dtype, decode] = choose_attention(decode, heads, kv_heads, dim, dtype)

    def forward(self, hidden_states, rope: RotaryTables, mask: Optional[AttentionMask], cache=None, cache_write=None,
                kv_len: Optional[int] = None):
        batch, steps, _ = hidden_states.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        if rope.rotation.shape[2] == 1:  # plain tables: the caller did not prepare them once per forward
            rope = with_identity_group(rope, self.rotated_groups)
        # [B, S, N + 2 KV, D]: query heads, then key heads, then value heads. Rotation is elementwise
        # and alike for every head, so rotating q and k together (and passing v through) before the
        # transpose gives stock's q and k exactly, and leaves k and v adjacent for one cache write.
        dtype = hidden_states.dtype
        qkv = self.qkv_proj(hidden_states).reshape(batch, steps, heads + 2 * kv_heads, dim)
        qkv = apply_rotary(qkv, rope, self._rotary.get(dtype, apply_rotary_composite))
        qkv = heads_first(qkv)
        q, keys_values = narrow(qkv, 1, 0, heads), narrow(qkv, 1, heads, 2 * kv_heads)  # [B, N, S, D], [B, 2 KV, S, D]
        if cache is None:
            k, v = ops.chunk(keys_values, 2, 1)
        else:
            if cache_write is None:
                raise ValueError("Attention with a cache needs cache_write (cache.prepare(slots))")
            cache.write(self.layer_idx, cache_write, keys_values)
            k, v = cache.read(self.layer_idx, kv_len)
        out = attend(q, k, v, mask, self._attend.get((dtype, steps == 1), attention_eager))
        return self.o_proj(heads_first(out).reshape(batch, steps, heads * dim))
