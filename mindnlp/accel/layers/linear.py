"""Linear layer whose CPU path avoids re-transposing the weight on every call.

Off Ascend, mindnlp's F.linear calls ops.Dense with the [out, in] weight, which transposes it per
call. A matmul against a contiguous [in, out] copy gives bit-identical results on the CPU backend
(tests/test_layers_dense.py) and is much faster: for a 2048 -> 5632 fp32 layer on the 2-core test
machine, 69 ms -> 4.7 ms for one token and 111 ms -> 11 ms for 40 tokens. Where mindnlp takes its
pyboost path (Ascend) we call F.linear, the kernel stock calls, so numerics there are stock's.
"""
from mindnlp.configs import use_pyboost
from mindnlp.core import nn, ops
from mindnlp.core.nn import functional as F


class Linear(nn.Linear):
    """Drop-in for nn.Linear: same parameter names and shapes ([out, in] weight, [out] bias).

    The transposed copy is made on the first CPU call and dropped whenever a state dict is loaded
    into the module; code that assigns `weight` directly must call `invalidate()`. It doubles the
    weight's memory on the CPU backend only.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None):
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        self._weight_t = None
        self._register_load_state_dict_pre_hook(self._on_load)

    def forward(self, input):
        if use_pyboost():
            return F.linear(input, self.weight, self.bias)
        if self._weight_t is None:
            self._weight_t = self.weight.swapaxes(0, 1).contiguous()
        out = ops.matmul(input, self._weight_t)
        if self.bias is not None:
            out = out + self.bias
        return out

    def invalidate(self) -> None:
        """Forget the transposed copy (call after changing `weight` in place)."""
        self._weight_t = None

    def _on_load(self, *args, **kwargs):
        self.invalidate()
