"""RMSNorm with the dtype policy of the stock module it replaces."""
import mindspore
from mindspore import mint
from mindnlp.core import nn, ops

from .. import device

KERNELS = ("composite", "stock_fused", "checked")

# The fused kernel rounds once where the composite rounds twice (before and after the weight): in
# bf16 they differ by about one unit in the last place, which MINDNLP_ACCEL_INEXACT=1 admits.
FUSED_ATOL = 1e-2
FUSED_RTOL = 1e-2


def rms_norm_composite(x, weight, eps: float):
    """Stock's composite: upcast to fp32, mean of squares, rsqrt, cast back, then times weight.

    Numerics: the cast back to the input dtype happens before the weight multiply, so in bf16 the
    result is rounded twice; the fused kernel rounds once and so can differ in the last bit.
    """
    input_dtype = x.dtype
    x = x.to(mindspore.float32)
    # mint.mean launches the ReduceMean kernel stock's ops.mean launches, through a cheaper frontend
    variance = mint.mean(x.pow(2), -1, True)
    x = x * ops.rsqrt(variance + eps)
    return weight * x.to(input_dtype)


def rms_norm_fused(x, weight, eps: float):
    """Ascend's RmsNorm kernel (runs only there)."""
    return mindspore.ops.rms_norm(x, weight, eps)[0]


class RMSNorm(nn.Module):
    """RMSNorm over the last axis; `weight` has the checkpoint's name and shape [hidden_size].

    kernel:
      "composite"   stock's fp32 composite on every device (Qwen2-MoE, Qwen2-VL, deepseek stock).
      "stock_fused" the fused kernel wherever mindnlp takes its pyboost path (except on Orange Pi), the
                    composite elsewhere: exactly what stock LlamaRMSNorm does in inference, so Llama
                    keeps stock numerics.
      "checked"     the fused kernel on Ascend only if `prepare_kernels` found it bit-identical to the
                    composite on this device (or within FUSED_ATOL / FUSED_RTOL with
                    MINDNLP_ACCEL_INEXACT=1; device.choose), else the composite.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, kernel: str = "composite"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"RMSNorm kernel must be one of {KERNELS}, got {kernel!r}")
        self.weight = nn.Parameter(ops.ones(hidden_size))
        self.variance_epsilon = eps
        self.kernel = kernel
        self._checked = {}  # dtype -> the kernel "checked" settled on

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        if self.kernel != "checked" or dtype in self._checked:
            return
        size = self.weight.shape[0]

        def make_inputs():
            x = ops.randn(4, 8, size).to(dtype)
            w = (1.0 + 0.1 * ops.randn(size)).to(dtype)
            return x, w, self.variance_epsilon

        self._checked[dtype] = device.choose(f"rms_norm/{dtype}/{size}", rms_norm_fused, rms_norm_composite, make_inputs,
                                             atol=FUSED_ATOL, rtol=FUSED_RTOL)

    def forward(self, hidden_states):
        return self._impl(hidden_states.dtype)(hidden_states, self.weight, self.variance_epsilon)

    def _impl(self, dtype):
        if self.kernel == "stock_fused" and device.stock_fused_rms_norm():
            return rms_norm_fused
        return self._checked.get(dtype, rms_norm_composite)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, kernel={self.kernel}"
