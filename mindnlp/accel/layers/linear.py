"""Linear layers: one whose CPU path avoids re-transposing the weight on every call, and one that
stacks several projections of the same input (attention's q, k, v) into a single matmul.

Off Ascend, mindnlp's F.linear calls ops.Dense with the [out, in] weight, which transposes it per
call. A matmul against a contiguous [in, out] copy gives bit-identical results on the CPU backend
(tests/test_layers_dense.py) and is much faster: for a 2048 -> 5632 fp32 layer on the 2-core test
machine, 69 ms -> 4.7 ms for one token and 111 ms -> 11 ms for 40 tokens. Where mindnlp takes its
pyboost path (Ascend) we call F.linear, the kernel stock calls, so numerics there are stock's.
"""
from typing import Dict, Sequence

from mindnlp.core import nn, ops
from mindnlp.core.nn import functional as F

from .. import device
from .primitives import matmul_2d, narrow


class Linear(nn.Linear):
    """Drop-in for nn.Linear: same parameter names and shapes ([out, in] weight, [out] bias).

    `prepare_kernels()` makes the transposed copy the CPU path reads (doubling the weight's memory
    on the CPU backend only); until then, and whenever the copy may be stale (a state dict was
    loaded into the module, or `weight` was rebound to another Parameter, as tying embeddings
    does), forward runs F.linear, stock's kernel, which gives the same bits. Code that changes
    `weight` in place by other means must call `invalidate()`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        # (weight Parameter, its contiguous transpose), held in a tuple: a Parameter assigned to an
        # attribute of its own would be registered, and saved, as a second parameter
        self._transposed = None
        self._register_load_state_dict_pre_hook(self._on_load)

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        """Make the transposed copy for the CPU path (nothing where mindnlp takes its pyboost path)."""
        if not device.pyboost() and self._transposed_weight() is None:
            self._transposed = (self.weight, self.weight.swapaxes(0, 1).contiguous())

    def _transposed_weight(self):
        """The transposed copy of the current `weight`, or None when there is none or it is stale."""
        if self._transposed is None or self._transposed[0] is not self.weight:
            return None
        return self._transposed[1]

    def forward(self, input):
        weight_t = None if device.pyboost() else self._transposed_weight()
        if weight_t is None:
            return F.linear(input, self.weight, self.bias)
        out = matmul_2d(input.reshape(-1, self.in_features), weight_t)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(input.shape[:-1] + (self.out_features,))

    def invalidate(self) -> None:
        """Forget the transposed copy (call after changing `weight` in place)."""
        self._transposed = None

    def _on_load(self, *args, **kwargs):
        self.invalidate()


# (rows, dtype, in, widths, pyboost) -> whether one matmul equals the per-block ones here.
_FUSION_EXACT: Dict[tuple, bool] = {}


class FusedLinear(Linear):
    """Projections of one input stacked as one Linear: weight rows [w_0; w_1; ...], bias likewise.

    Each output element is the same dot product as in the separate Linear, but a matmul kernel may
    sum it in another order when the output width changes: the 2-thread CPU backend splits the
    reduction axis across threads for a single row with a narrow output (under ~1024 columns),
    and sums each column in one pass for a wide one, so q (1536 wide) with k and v (256 each) of
    Qwen2-VL differs from the 2048-wide fused product in the last bits. So before one matmul
    serves inputs of `rows` rows (the product of the leading axes: the matmul sees [rows, in]),
    `prepare_kernels` compares it on a random layer of this shape bit for bit with the per-block
    matmuls (one host sync per row count and dtype, kept for the process); forward runs one
    matmul only for a row count found exact, and one matmul per block, the separate layers'
    arithmetic, otherwise. Only the decode row count (one token per sequence, where launches per
    step matter) is prepared: prompt lengths vary, and a check per length would cost a sync in
    every prefill.
    """

    def __init__(self, in_features: int, widths: Sequence[int], bias: bool = True, dtype=None):
        super().__init__(in_features, sum(widths), bias=bias, dtype=dtype)
        self.widths = tuple(widths)

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        super().prepare_kernels(dtype, batch_size)
        key = self._fusion_key(batch_size, dtype)
        if key not in _FUSION_EXACT:
            _FUSION_EXACT[key] = self._fusion_is_exact(batch_size, dtype)

    def forward(self, input):
        rows = input.size // self.in_features
        if _FUSION_EXACT.get(self._fusion_key(rows, input.dtype), False):
            return super().forward(input)
        return per_block(self, input)

    def _fusion_key(self, rows, dtype):
        return (rows, dtype, self.in_features, self.widths, device.pyboost())

    def _fusion_is_exact(self, rows, dtype) -> bool:
        trial = FusedLinear(self.in_features, self.widths, bias=self.bias is not None).to(dtype)
        Linear.prepare_kernels(trial, dtype, rows)
        same = []
        for _ in range(device.CHECK_PROBES):
            probe = ops.randn(rows, self.in_features).to(dtype)
            same.append(ops.equal(Linear.forward(trial, probe), per_block(trial, probe)).all())
        return bool(ops.stack(same).all())


def per_block(layer: FusedLinear, input):
    """`layer`'s separate projections, concatenated: F.linear on each row block of its weight
    (bit-identical to our Linear on the CPU backend, see Linear)."""
    outs, start = [], 0
    for width in layer.widths:
        bias = None if layer.bias is None else narrow(layer.bias, 0, start, width)
        outs.append(F.linear(input, narrow(layer.weight, 0, start, width), bias))
        start += width
    return ops.cat(outs, dim=-1)
