"""Sparse mixture-of-experts block with stacked experts, numerically stock's at each step.

Stock (Qwen2-MoE and deepseek-moe alike) adds each token's expert outputs into a buffer of
the hidden dtype, one expert at a time in ascending expert index, each weighted output
already rounded to the hidden dtype; then adds the shared expert. `combine_in_expert_order`
repeats exactly those roundings, so only the expert matmuls themselves can differ from stock.
"""
import mindspore
from mindspore import ops as msops

from mindnlp.core import nn, ops
from mindnlp.core.nn import functional as F

from .. import device
from .linear import Linear
from .moe_experts import (GatedMLP, StackedExperts, dense_outputs, gathered_outputs,
                          grouped_outputs)
from .moe_router import RouterConfig, route

# Self-check tolerance of the grouped kernel against the dense twin, per dtype: about two
# units in the last place at the magnitudes of the check's inputs.
_CHECK_TOL = {mindspore.bfloat16: 2e-2, mindspore.float16: 2e-3, mindspore.float32: 1e-5}


def combine_in_expert_order(weighted):
    """Sum [T, k, H] over k left to right in its own dtype: (((c0 + c1) + c2) + ...).

    Stock's buffer starts at zero and 0 + c0 == c0 exactly, so this is its result bit for bit
    when k is ordered by ascending expert index. A reduction (sum over the axis) would
    accumulate in higher precision and round once, which is not what stock does.
    """
    total = weighted[:, 0]
    for slot in range(1, weighted.shape[1]):
        total = total + weighted[:, slot]
    return total


class SparseMoe(nn.Module):
    """Router, stacked routed experts and an optional shared expert.

    Parameters keep the checkpoint's module names: `gate.weight` [E, H] (the router),
    `experts.gate_up_weight` [E, H, 2I], `experts.down_weight` [E, I, H],
    `<shared_name>.gate_up_proj.weight` [2S, H], `<shared_name>.down_proj.weight` [H, S] and,
    when gated, `shared_expert_gate.weight` [1, H]. forward: hidden_states [..., H] -> [..., H].
    """

    def __init__(self, hidden_size, intermediate_size, router: RouterConfig,
                 shared_intermediate_size=None, shared_name="shared_expert", shared_gate=False,
                 hidden_act="silu", dtype=None):
        super().__init__()
        if shared_gate and not shared_intermediate_size:
            raise ValueError("shared_gate needs a shared expert (shared_intermediate_size)")
        self.router = router
        self.shared_name = shared_name if shared_intermediate_size else None
        self.gate = Linear(hidden_size, router.num_experts, bias=False, dtype=dtype)
        self.experts = StackedExperts(router.num_experts, hidden_size, intermediate_size,
                                      hidden_act, dtype=dtype)
        if self.shared_name:
            self.add_module(shared_name, GatedMLP(hidden_size, shared_intermediate_size,
                                                  hidden_act, dtype=dtype))
        self.shared_expert_gate = (Linear(hidden_size, 1, bias=False, dtype=dtype)
                                   if shared_gate else None)

    @classmethod
    def from_qwen2_moe_config(cls, config, dtype=None):
        """Qwen2MoeSparseMoeBlock: fp32 softmax, renormalised only if norm_topk_prob,
        one shared expert scaled by sigmoid(shared_expert_gate(x))."""
        router = RouterConfig(config.num_experts, config.num_experts_per_tok,
                              softmax_dtype=mindspore.float32, norm_topk_prob=config.norm_topk_prob)
        return cls(config.hidden_size, config.moe_intermediate_size, router,
                   shared_intermediate_size=config.shared_expert_intermediate_size,
                   shared_name="shared_expert", shared_gate=True,
                   hidden_act=config.hidden_act, dtype=dtype)

    @classmethod
    def from_deepseek_config(cls, config, dtype=None):
        """DeepseekMoE: softmax in the hidden dtype, unsorted topk, optional renormalisation
        (+1e-20, only for k > 1), n_shared_experts fused into one ungated MLP."""
        if config.scoring_func != "softmax":
            raise ValueError(f"unsupported MoE scoring function {config.scoring_func!r}")
        top_k = config.num_experts_per_tok
        router = RouterConfig(config.n_routed_experts, top_k, softmax_dtype=None,
                              norm_topk_prob=bool(config.norm_topk_prob and top_k > 1),
                              norm_eps=1e-20, topk_sorted=False)
        shared = (config.moe_intermediate_size * config.n_shared_experts
                  if config.n_shared_experts else None)
        return cls(config.hidden_size, config.moe_intermediate_size, router,
                   shared_intermediate_size=shared, shared_name="shared_experts",
                   hidden_act=config.hidden_act, dtype=dtype)

    def forward(self, hidden_states):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        weights, experts = route(self.gate(x), self.router, x.dtype)
        outputs = self.expert_outputs(x, experts)
        out = combine_in_expert_order(outputs * weights[:, :, None])
        if self.shared_name:
            shared = getattr(self, self.shared_name)(x)
            if self.shared_expert_gate is not None:
                shared = F.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out.reshape(shape)

    def expert_outputs(self, x, experts):
        """[T, k, H] outputs of the selected experts, by the cheapest path for this shape."""
        rows = experts.shape[0] * experts.shape[1]
        if rows < self.router.num_experts:
            # fewer weight bytes gathered than stored: decode
            return gathered_outputs(self.experts, x, experts)
        return _prefill_kernel(x.dtype)(self.experts, x, experts)


def _prefill_kernel(dtype):
    """grouped_outputs on the grouped matmul where it runs and agrees with dense_outputs."""
    tol = _CHECK_TOL.get(dtype, 0.0)
    return device.choose(f"moe.grouped_matmul_v4[{dtype}]", grouped_outputs, dense_outputs,
                         lambda: _check_inputs(dtype), atol=tol, rtol=tol)


def _check_inputs(dtype, num_experts=4, tokens=8, hidden=32, intermediate=16):
    """A small expert stack and 8 tokens routed to 2 distinct experts each."""
    experts = StackedExperts(num_experts, hidden, intermediate, dtype=dtype)
    normal = msops.StandardNormal(seed=7)
    experts.gate_up_weight.assign_value((normal(experts.gate_up_weight.shape) * hidden ** -0.5).to(dtype))
    experts.down_weight.assign_value((normal(experts.down_weight.shape) * intermediate ** -0.5).to(dtype))
    x = normal((tokens, hidden)).to(dtype)
    first = ops.arange(0, tokens, dtype=mindspore.int64) % (num_experts - 1)
    return experts, x, msops.stack([first, first + 1], axis=1)
