"""MindSpore primitives called directly, made once: the kernels stock's mindnlp ops launch off the
pyboost path (the CPU backend), without the per-call dispatch of their function wrappers (10 to
100 us a call there, against launches of a few us). Where mindnlp takes its pyboost path (Ascend)
each helper calls the mindnlp op stock calls, so kernels and numerics stay stock's on either path.
Tests compare every user of these with stock bit for bit.
"""
import functools

import mindspore
from mindspore import Tensor, ops as msops

from mindnlp.core import ops
from mindnlp.core.nn import functional as F

from .. import device
from ..graphs import mindspore_trace

_matmul = msops.MatMul()
_batch_matmul = msops.BatchMatMul()
_gather = msops.Gather()
_sort_last = msops.Sort(-1)
_cumsum = msops.CumSum()
_scatter_update = msops.ScatterUpdate()
_softmax_last = msops.Softmax(-1)
_real_div = msops.RealDiv()


def matmul_2d(a, b):
    """a [M, K] @ b [K, N]: the MatMul kernel mindnlp's ops.matmul reaches for inputs of any rank."""
    return _matmul(a, b)


def batch_matmul(a, b):
    """a @ b over equal leading batch axes, as stock's ops.matmul computes it. Off pyboost `b` is made
    contiguous first, which costs less than the kernel call copying a transposed view itself."""
    if device.pyboost():
        return ops.matmul(a, b)
    return _batch_matmul(a, b.contiguous())


def take_rows(table, index):
    """table[index] along axis 0 (an index copy: the same on every backend)."""
    return _gather(table, index, 0)


def take_along_positions(x, index):
    """x [B, S, ...] at the positions index (int32 [n], a device tensor): [B, n, ...] (an index copy)."""
    return _gather(x, index, 1)


def softmax_last(x, dtype=None):
    """F.softmax(x, dim=-1, dtype=dtype), stock's softmax: x cast to `dtype` first, if given."""
    if device.pyboost():
        return F.softmax(x, dim=-1, dtype=dtype)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return _softmax_last(x)


def divide(x, value: float):
    """x / value, stock's division by a Python number. Off pyboost: the RealDiv kernel by a 0-d tensor
    of x's dtype, the same quotient (tests/test_layers_dense.py), 3 to 4x faster than the Div kernel a
    Python divisor reaches on the CPU backend (`python eval/bench_kernels.py`: 174 against 53 ms for
    32 x 620 x 620 fp32 scores on the 2-core test host)."""
    if device.pyboost():
        return x / value
    return _real_div(x, _scalar(value, x.dtype))


def sort_last(keys):
    """(sorted keys, order) ascending along the last axis (float keys sort on every backend)."""
    return _sort_last(keys)


def cumsum(x, axis: int):
    """Running sums of x along `axis` in x's dtype: the kernel stock's ops.cumsum launches on each path."""
    if device.pyboost():
        return ops.cumsum(x, axis)
    return _cumsum(x, axis)


def topk_last(x, k: int, sorted_: bool = True):
    """Stock's ops.topk(x, k, dim=-1, sorted=sorted_): the TopK primitive off pyboost, given k as a
    tensor made once (a Python k costs a Cast launch per call)."""
    if device.pyboost():
        return ops.topk(x, k, dim=-1, sorted=sorted_)
    return _topk(sorted_)(x, _int32_scalar(k))


def capturing() -> bool:
    """Whether a trace capture (graphs.capture) is recording. It records primitive calls, not Tensor
    views: basic indexing is frozen into the graph as a constant of its trace-time value, and
    Tensor.broadcast_to fails inside its pyboost wrapper (mindspore-dev 2.6). The helpers below take a
    view in PyNative, as before, and the equivalent copy while capturing; the values are the same."""
    return mindspore_trace.capturing()


def broadcast_to(x, shape):
    """x broadcast to `shape`, x's rank: a view in PyNative, the BroadcastTo primitive while capturing."""
    if capturing():
        return _broadcast_to(tuple(shape))(x)
    return x.broadcast_to(shape)


def narrow(x, axis: int, start: int, length: int):
    """x's `length` entries from `start` along `axis`: a slice in PyNative, the Narrow op while capturing."""
    axis %= x.ndim
    if capturing():
        return msops.narrow(x, axis, start, length)
    return x[(slice(None),) * axis + (slice(start, start + length),)]


def scatter_update(target, rows, updates):
    """Overwrite rows `rows` of the Parameter `target` with `updates`, in place."""
    return _scatter_update(target, rows, updates)


@functools.lru_cache(maxsize=None)
def _topk(sorted_: bool):
    return msops.TopK(sorted_)


@functools.lru_cache(maxsize=None)
def _broadcast_to(shape):
    return msops.BroadcastTo(shape)


@functools.lru_cache(maxsize=None)
def _int32_scalar(value: int) -> Tensor:
    return Tensor(value, mindspore.int32)


@functools.lru_cache(maxsize=None)
def _scalar(value: float, dtype) -> Tensor:
    return Tensor(value, dtype)
