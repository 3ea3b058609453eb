"""The three stand-ins that let the 0.4 branch's stock deepseek run on MindSpore's CPU backend.

Stock deepseek (mindnlp/transformers/models/deepseek/ on the branch) fails on the CPU backend for
three reasons, none of them in its arithmetic (shared/research/deepseek.md, section 3):
  1. the causal mask is filled with a Python int 0 (`masked_fill(cond, 0)`), and the padding mask
     with a float32 tensor whatever the mask's dtype: the CPU MaskedFill kernel takes neither;
  2. `Tensor.bincount` falls back to Python code that breaks once mindnlp has changed how dtypes
     print (mindnlp/patch.py), so the expert loop cannot count its tokens;
  3. `mindspore.mint.scatter_add` has no CPU kernel.
`stock_deepseek_on_cpu()` replaces exactly these, for the test or harness process that asks, and
restores them afterwards; nothing of it reaches the shipped code. Each stand-in computes what the
original computes where it runs: the fill value in the mask's own dtype (0 and float32's minimum
convert to the same values an Ascend fill writes), int64 counts (Ascend's bincount gives int64),
and an element-wise scatter add (stock's rows do not repeat within a call, so the order of the adds
cannot matter).
"""
import contextlib

import numpy as np

import mindspore
from mindspore import Tensor, ops


def _masked_fill_in_own_dtype(original):
    def masked_fill(self, mask, value):
        if isinstance(value, (bool, int, float)):
            value = Tensor(value, self.dtype)
        elif isinstance(value, Tensor) and value.dtype != self.dtype:
            value = value.to(self.dtype)
        return original(self, mask, value)
    return masked_fill


def _bincount_on_host(self, weights=None, minlength=0):
    if weights is not None:
        raise NotImplementedError("the deepseek shim counts without weights, as stock calls it")
    return Tensor(np.bincount(self.asnumpy().reshape(-1), minlength=int(minlength)).astype(np.int64))


def _scatter_add(input, dim, index, src):  # pylint: disable=redefined-builtin
    return ops.tensor_scatter_elements(input, index, src, axis=dim, reduction="add")


@contextlib.contextmanager
def stock_deepseek_on_cpu():
    """Within the block, stock deepseek runs on the CPU backend (see the module docstring)."""
    from mindspore.common._stub_tensor import StubTensor

    replaced = []  # (owner, name, what the owner itself held, or _INHERITED)

    def replace(owner, name, value):
        replaced.append((owner, name, vars(owner).get(name, _INHERITED)))
        setattr(owner, name, value)

    try:
        for owner in (Tensor, StubTensor):  # PyNative outputs are StubTensors, which define their own methods
            replace(owner, "masked_fill", _masked_fill_in_own_dtype(getattr(owner, "masked_fill")))
            replace(owner, "bincount", _bincount_on_host)
        replace(mindspore.mint, "scatter_add", _scatter_add)
        yield True
    finally:
        for owner, name, value in reversed(replaced):
            if value is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


_INHERITED = object()
