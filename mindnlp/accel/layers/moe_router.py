"""Top-k routing of tokens to experts, with the dtype policy of each stock model."""
from dataclasses import dataclass
from typing import Optional

import mindspore
from mindspore import ops as msops

from mindnlp.core import ops
from mindnlp.core.nn import functional as F


@dataclass(frozen=True)
class RouterConfig:
    """How router logits become routing weights.

    softmax_dtype: dtype of the softmax, or None to stay in the logits' dtype.
        Qwen2-MoE takes the softmax in float32; deepseek-moe in the hidden dtype.
    norm_topk_prob: divide the k weights by their sum (in the softmax's dtype).
    norm_eps: added to that sum (deepseek adds 1e-20, Qwen2-MoE nothing).
    topk_sorted: passed to topk as stock does; it can only change which of tied
        experts is picked, so it is kept equal to stock.
    """

    num_experts: int
    top_k: int
    softmax_dtype: Optional[mindspore.dtype.Type] = mindspore.float32
    norm_topk_prob: bool = False
    norm_eps: float = 0.0
    topk_sorted: bool = True

    def __post_init__(self):
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..num_experts={self.num_experts}, got {self.top_k}")


def route(logits, config: RouterConfig, hidden_dtype):
    """Routing weights [T, k] in `hidden_dtype` and expert ids [T, k], ascending per token.

    Weights and ids are the ones stock computes. Stock adds each token's expert outputs
    in ascending expert index (its loop runs over experts), so the ids come back sorted
    that way and the weights are permuted with them; topk's own order is dropped.
    """
    probs = F.softmax(logits, dim=-1, dtype=config.softmax_dtype)
    weights, experts = ops.topk(probs, config.top_k, dim=-1, sorted=config.topk_sorted)
    if config.norm_topk_prob:
        denominator = ops.sum(weights, dim=-1, keepdim=True)
        if config.norm_eps:
            denominator = denominator + config.norm_eps
        weights = weights / denominator
    weights = weights.to(hidden_dtype)
    # Sort keys as float32 (exact below 2**24 experts): Sort takes float32 on every backend.
    _, order = msops.sort(experts.to(mindspore.float32), axis=-1)
    experts = msops.gather_elements(experts, 1, order)
    weights = msops.gather_elements(weights, 1, order)
    return weights, experts
