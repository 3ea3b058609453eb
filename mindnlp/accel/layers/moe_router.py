"""Top-k routing of tokens to experts, with the dtype policy of each stock model."""
import functools
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import mindspore
from mindspore import Tensor

from mindnlp.core import ops

from .. import device
from .primitives import softmax_last, sort_last, take_rows, topk_last


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


class Routing(NamedTuple):
    """The experts each token uses, in topk's order, and how to list them by expert index."""
    weights: Tensor  # [T, k] routing weights in the hidden dtype
    experts: Tensor  # [T, k] int expert ids
    order: Tensor  # [T, k] int32: experts[t, order[t, s]] ascends with s


def route(logits, config: RouterConfig, hidden_dtype, int_keys: bool = False) -> Routing:
    """The routing weights and experts stock computes for router `logits` [T, E].

    Stock adds each token's expert outputs in ascending expert index (its loop runs over
    experts), so `order` lists each token's k slots that way; see SparseMoe.forward. `int_keys`
    sorts the expert ids themselves, where `int_sort_keys_exact` found that Sort does so here.
    """
    probs = softmax_last(logits, config.softmax_dtype)
    weights, experts = topk_last(probs, config.top_k, config.topk_sorted)
    if config.norm_topk_prob:
        denominator = ops.sum(weights, dim=-1, keepdim=True)
        if config.norm_eps:
            denominator = denominator + config.norm_eps
        weights = weights / denominator
    if weights.dtype != hidden_dtype:
        weights = weights.to(hidden_dtype)
    _, order = sort_last(experts if int_keys else _as_float_keys(experts, config.num_experts))
    return Routing(weights, experts, order)


def _as_float_keys(experts, num_experts: int):
    """Sort takes float keys on every backend. The ids become floats by a lookup in a float table
    (exact below 2**24 experts): a Cast from int costs several times a Gather on the CPU backend."""
    return take_rows(_expert_ids_as_float(num_experts), experts)


# (device target, pyboost, E, k) -> whether Sort orders topk's expert ids as it orders their float keys
_INT_KEYS_EXACT = {}


def int_sort_keys_exact(config: RouterConfig) -> bool:
    """Whether Sort, given the int ids topk returns, orders them as it orders their float images
    (one Sort and one Gather fewer per MoE layer), checked once per backend on the ids of random
    routings (one host sync); False where it refuses int keys."""
    key = (mindspore.get_context("device_target"), device.pyboost(), config.num_experts, config.top_k)
    if key not in _INT_KEYS_EXACT:
        try:
            probs = softmax_last(ops.randn(64, config.num_experts))
            _, experts = topk_last(probs, config.top_k, config.topk_sorted)
            same = ops.equal(sort_last(experts)[1], sort_last(_as_float_keys(experts, config.num_experts))[1])
            _INT_KEYS_EXACT[key] = bool(same.all())
        except (RuntimeError, TypeError, ValueError):
            _INT_KEYS_EXACT[key] = False
    return _INT_KEYS_EXACT[key]


@functools.lru_cache(maxsize=None)
def _expert_ids_as_float(num_experts: int) -> Tensor:
    """[E] float32 table: entry e is e."""
    return Tensor(np.arange(num_experts, dtype=np.float32))
