"""Routed experts stored stacked, and the three ways to run the selected (token, expert) pairs.

All three return, for tokens x [T, H] and expert ids [T, k], the expert outputs [T, k, H]
in the hidden dtype, row (t, s) being expert ids[t, s] applied to x[t]:
- `gathered_outputs`: gathers the k selected experts' weights per token and runs a batched matmul;
  for decode, where T*k is small, so only the selected experts' weights are read.
- `dense_outputs`: runs every expert on every token and keeps the selected rows; the portable
  prefill (static shapes, no sort, no host sync), at E/k times the arithmetic.
- `grouped_outputs`: sorts the T*k rows by expert and runs one grouped matmul per projection;
  the Ascend prefill with `grouped_matmul_v4`. Given the per-row twin of that kernel it
  runs anywhere, which is how its permutations are tested off the device.
"""
import math

import mindspore
from mindspore import mint, ops as msops

from mindnlp.core import nn, ops
from mindnlp.common.activations import ACT2FN

from ..loading import EXPERT_SLOTS, SlotLoadedModule, gate_up_slots
from .primitives import broadcast_to, take_rows
from .linear import FusedLinear, Linear


def _uniform_like_linear(param, fan_in):
    """The init stock's nn.Linear gives a weight with this fan-in (skipped under no_init_weights)."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(param, -bound, bound)


def _swiglu(fused, act):
    """act(gate) * up from the fused [..., 2I] projection (gate first), as stock's MLP computes it."""
    gate, up = ops.chunk(fused, 2, -1)
    return act(gate) * up


class GatedMLP(SlotLoadedModule):
    """Stock's gate/up/down MLP, down_proj(act(gate_proj(x)) * up_proj(x)), on our Linear layers.

    gate and up are the row blocks of `gate_up_proj` ([2I, H], stock's [out, in] layout), so each
    output is the dot product stock's F.linear computes (FusedLinear runs one matmul only where
    it checked that this sums alike, per block otherwise); `down_proj` is a Linear [H, I].
    Checkpoint names are Hugging Face's: `gate_proj.weight` and `up_proj.weight` load into their
    rows of `gate_up_proj` and are saved under those names by loading.hf_state_dict;
    `down_proj.weight` is down_proj's own. Used for shared experts and dense MLP layers.
    """

    def __init__(self, hidden_size, intermediate_size, hidden_act="silu", dtype=None):
        super().__init__()
        self.act = ACT2FN[hidden_act]
        self.checkpoint_slots = gate_up_slots(intermediate_size)
        self.gate_up_proj = FusedLinear(hidden_size, (intermediate_size, intermediate_size), bias=False,
                                        dtype=dtype)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False, dtype=dtype)

    def forward(self, x):
        return self.down_proj(_swiglu(self.gate_up_proj(x), self.act))


class StackedExperts(SlotLoadedModule):
    """E routed experts: gate_up_weight [E, H, 2I] (gate then up), down_weight [E, I, H].

    Loads from `{j}.gate_proj.weight`, `{j}.up_proj.weight`, `{j}.down_proj.weight`.
    """

    checkpoint_slots = EXPERT_SLOTS

    def __init__(self, num_experts, hidden_size, intermediate_size, hidden_act="silu", dtype=None):
        super().__init__()
        self.num_experts = num_experts
        self.act = ACT2FN[hidden_act]
        self.gate_up_weight = nn.Parameter(
            ops.empty((num_experts, hidden_size, 2 * intermediate_size), dtype=dtype))
        self.down_weight = nn.Parameter(ops.empty((num_experts, intermediate_size, hidden_size), dtype=dtype))
        _uniform_like_linear(self.gate_up_weight, hidden_size)
        _uniform_like_linear(self.down_weight, intermediate_size)

    def bytes_per_expert(self) -> int:
        """Bytes of one expert's weights (gate, up and down), as stored."""
        weights = (self.gate_up_weight, self.down_weight)
        return sum(w.size * w.itemsize for w in weights) // self.num_experts


def gathered_outputs(module: StackedExperts, x, experts):
    tokens, top_k = experts.shape
    hidden = x.shape[-1]
    flat = experts.reshape(-1)
    if tokens == 1:  # a broadcast view the matmul reads as it is (reshaping one costs a copy)
        rows = broadcast_to(x.reshape(1, 1, hidden), (top_k, 1, hidden))
    else:
        rows = broadcast_to(x.unsqueeze(1), (tokens, top_k, hidden)).reshape(tokens * top_k, 1, hidden)
    fused = mint.bmm(rows, take_rows(module.gate_up_weight, flat))       # [T*k, 1, 2I]
    act = _swiglu(fused, module.act)
    out = mint.bmm(act, take_rows(module.down_weight, flat))              # [T*k, 1, H]
    return out.reshape(tokens, top_k, hidden)


def dense_outputs(module: StackedExperts, x, experts):
    tokens, top_k = experts.shape
    hidden = x.shape[-1]
    fused = mint.matmul(x, module.gate_up_weight)                              # [E, T, 2I]
    act = _swiglu(fused, module.act)
    out = mint.bmm(act, module.down_weight).reshape(module.num_experts * tokens, hidden)
    # row e*T + t of `out` is expert e on token t
    picks = experts * tokens + ops.arange(0, tokens, dtype=experts.dtype).reshape(tokens, 1)
    return take_rows(out, picks.reshape(-1)).reshape(tokens, top_k, hidden)


def grouped_mm_ascend(rows, weight, counts, row_experts):
    """Ascend grouped matmul (group sizes as counts, group_list_type=1).

    Imported here, not at module level: a MindSpore without this kernel then fails the device
    self-check, which keeps the dense twin, instead of failing the import of the whole model."""
    from mindspore.ops.auto_generate import grouped_matmul_v4

    return grouped_matmul_v4([rows], [weight], group_list=counts, split_item=3, group_type=0,
                             group_list_type=1)[0]


def grouped_mm_twin(rows, weight, counts, row_experts):
    """Same result as `grouped_mm_ascend` by gathering each row's weight (R copies: tests only)."""
    return mint.bmm(rows[:, None, :], msops.gather(weight, row_experts, 0))[:, 0]


def grouped_outputs(module: StackedExperts, x, experts, grouped_mm=grouped_mm_ascend):
    """`grouped_mm(rows [R, K], weight [E, K, N], counts [E], row_experts [R]) -> [R, N]` runs
    rows sorted by expert, `counts` rows per expert; the Ascend kernel by default."""
    tokens, top_k = experts.shape
    flat = experts.reshape(-1)
    # Sort keys as float32 (exact at these sizes): Sort takes float32 on every backend.
    row_experts, order = msops.sort(flat.to(mindspore.float32))
    rows = take_rows(x, order // top_k)                                  # [T*k, H]
    # int32 one-hot (the widest OneHot every backend has), group sizes as the int64 group_list
    counts = msops.one_hot(flat, module.num_experts, mindspore.Tensor(1, mindspore.int32),
                           mindspore.Tensor(0, mindspore.int32)).sum(0).to(mindspore.int64)
    row_experts = row_experts.to(flat.dtype)
    fused = grouped_mm(rows, module.gate_up_weight, counts, row_experts)
    act = _swiglu(fused, module.act)
    out = grouped_mm(act, module.down_weight, counts, row_experts)               # [T*k, H]
    _, inverse = msops.sort(order.to(mindspore.float32))
    return take_rows(out, inverse).reshape(tokens, top_k, -1)
