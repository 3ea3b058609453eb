"""Qwen2-MoE (Qwen1.5-MoE-A2.7B) on the shared decoder: what is Qwen2-MoE's own.

Numerics follow stock mindnlp 0.4 step by step: fp32 RMSNorm cast back before the weight, the rope
table gathered then cast to the activation dtype, eager attention with an fp32 softmax, the router
softmax in fp32, stock's expert order and rounding in the MoE, logits cast to fp32.
"""
import mindspore
from mindnlp.transformers.modeling_outputs import MoeCausalLMOutputWithPast
from mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoePreTrainedModel

from ..layers.decoder import DecoderConfig
from ..layers.moe import PREFILL_BUCKET_LIMIT, SparseMoe
from ..layers.moe_router import RouterConfig
from .causal_lm import DecoderForCausalLM


def is_sparse_layer(config, index):
    """Stock's rule for which decoder layers carry the MoE block."""
    return (index not in config.mlp_only_layers and config.num_experts > 0
            and (index + 1) % config.decoder_sparse_step == 0)


def sparse_moe(config, dtype=None):
    """Qwen2MoeSparseMoeBlock: fp32 softmax, renormalised only if norm_topk_prob, one shared expert
    scaled by sigmoid(shared_expert_gate(x))."""
    router = RouterConfig(config.num_experts, config.num_experts_per_tok, softmax_dtype=mindspore.float32,
                          norm_topk_prob=config.norm_topk_prob)
    return SparseMoe(config.hidden_size, config.moe_intermediate_size, router,
                     shared_intermediate_size=config.shared_expert_intermediate_size, shared_name="shared_expert",
                     shared_gate=True, hidden_act=config.hidden_act, dtype=dtype)


class Qwen2MoeForCausalLM(DecoderForCausalLM, Qwen2MoePreTrainedModel):
    """Drop-in for stock's Qwen2MoeForCausalLM in inference."""

    output_class = MoeCausalLMOutputWithPast
    greedy_prefill_bucket_limit = PREFILL_BUCKET_LIMIT

    @classmethod
    def decoder_config(cls, config):
        return DecoderConfig.from_hf(config, qkv_bias=True, rope_form="table")

    @classmethod
    def sparse_block(cls, config, index):
        return sparse_moe(config) if is_sparse_layer(config, index) else None

    @classmethod
    def unsupported_reason(cls, config):
        if getattr(config, "output_router_logits", False):
            return "output_router_logits is set (we do not return router logits)"
        if config.hidden_act != "silu":
            return f"hidden_act {config.hidden_act!r}"
        if config.num_experts and config.num_experts_per_tok > config.num_experts:
            return "more experts per token than experts"
        return None
