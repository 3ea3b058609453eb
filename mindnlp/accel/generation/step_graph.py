"""What the decode and prefill graphs share: a step's arguments as a layout and a flat tuple of
tensors, the step as a function of those tensors, and the comparison of a graph's step with PyNative's."""
from typing import Optional

import numpy as np
import mindspore
from mindspore import Tensor

from .step import decode_step

SOFTMAX_ATOL = 1e-4


class _Tensor:
    """Marks a tensor field in a layout."""


_TENSOR = _Tensor()


def flatten(inputs: dict, state, constants, last: Optional[Tensor] = None):
    """(layout, tensors): the input names, the NamedTuples' types, which of their fields hold tensors
    and the values of the others (None, or a Python number such as the penalty, which the graph
    holds as a constant), whether `last` is given, and every tensor's shape and dtype (a new shape
    is a new graph); then the inputs' tensors, the fields' tensors and `last`, in that order."""
    names = tuple(sorted(inputs))
    layout, tensors = [names], [inputs[name] for name in names]
    for group in (state, constants):
        kinds = []
        for value in group:
            if isinstance(value, Tensor):
                kinds.append(_TENSOR)
                tensors.append(value)
            else:
                kinds.append(value)
        layout.append((type(group), tuple(kinds)))
    layout.append(last is not None)
    tensors += [last] if last is not None else []
    layout.append(tuple((tuple(t.shape), t.dtype) for t in tensors))
    return tuple(layout), tuple(tensors)


def unflatten(layout, tensors):
    """(inputs, state, constants, last) from flatten's layout and tensors."""
    names = layout[0]
    supplied = iter(tensors[len(names):])
    groups = [kind(*(next(supplied) if value is _TENSOR else value for value in kinds)) for kind, kinds in layout[1:3]]
    last = next(supplied) if layout[3] else None
    return dict(zip(names, tensors)), groups[0], groups[1], last


def step_function(model, cache, layout, kv_len: Optional[int]):
    """decode_step over flatten's tensors, returning (logits, scores, tokens, *the next state's tensors)."""
    def step(*tensors):
        inputs, state, constants, last = unflatten(layout, tensors)
        logits, scores, tokens, nxt = decode_step(model, cache, inputs, state, constants, kv_len, last)
        return (logits, scores, tokens) + tuple(t for t in nxt if t is not None)

    return step


def unpacker(state):
    """The graph's flat output as decode_step returns it, for a call whose state is `state`."""
    def unpack(out):
        supplied = iter(out[3:])
        return out[0], out[1], out[2], type(state)(*(next(supplied) if v is not None else None for v in state))

    return unpack


def disagreement(compiled, eager) -> Optional[str]:
    """None if two steps' (logits, scores, tokens, next state) agree: argmax equal and softmax within
    SOFTMAX_ATOL (fp32), tokens and every state tensor equal; else how they differ."""
    got, want = compiled[0].astype(mindspore.float32).asnumpy(), eager[0].astype(mindspore.float32).asnumpy()
    if not np.isfinite(got).all():
        return "gave logits that are not finite"
    if (got.argmax(-1) != want.argmax(-1)).any():
        return "chose other tokens than PyNative"
    exact = [(compiled[2], eager[2])] + [(a, b) for a, b in zip(compiled[3], eager[3]) if a is not None]
    if any(not np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in exact):
        return "gave other tokens or next-step state than PyNative"
    diff = float(np.abs(_softmax(got) - _softmax(want)).max())
    if diff > SOFTMAX_ATOL:
        return f"differs from PyNative (softmax by {diff:.3g}, more than {SOFTMAX_ATOL})"
    return None


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
