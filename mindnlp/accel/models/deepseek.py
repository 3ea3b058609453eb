"""deepseek-moe (deepseek-moe-16b-chat) on the shared decoder: what is deepseek's own.

Numerics follow the 0.4 branch's stock code step by step (shared/research/deepseek.md): fp32 RMSNorm
cast back before the weight, the rope table cast to the activation dtype, eager attention with an
fp32 softmax; the router's softmax in the activation dtype and an unsorted topk over it, renormalised
(+1e-20) only for top_k > 1 with norm_topk_prob; expert outputs added in ascending expert order in the
activation dtype; the shared experts as one ungated MLP, added after; the first
`first_k_dense_replace` layers (and those off `moe_layer_freq`) dense; logits cast to fp32.
"""
from ..layers.decoder import DecoderConfig
from ..layers.moe import PREFILL_BUCKET_LIMIT, SparseMoe
from ..layers.moe_router import RouterConfig
from .causal_lm import DecoderForCausalLM
from .deepseek_base import config_and_base

DeepseekConfig, DeepseekPreTrainedModel = config_and_base()


def is_sparse_layer(config, index):
    """Stock's rule for which decoder layers carry the MoE block."""
    return (config.n_routed_experts is not None and index >= config.first_k_dense_replace
            and index % config.moe_layer_freq == 0)


def deepseek_moe(config, dtype=None):
    """DeepseekMoE: softmax in the hidden dtype, unsorted topk, n_shared_experts as one ungated MLP."""
    top_k = config.num_experts_per_tok
    router = RouterConfig(config.n_routed_experts, top_k, softmax_dtype=None,
                          norm_topk_prob=bool(config.norm_topk_prob and top_k > 1), norm_eps=1e-20,
                          topk_sorted=False)
    shared = config.moe_intermediate_size * config.n_shared_experts if config.n_shared_experts else None
    return SparseMoe(config.hidden_size, config.moe_intermediate_size, router, shared_intermediate_size=shared,
                     shared_name="shared_experts", hidden_act=config.hidden_act, dtype=dtype)


class DeepseekForCausalLM(DecoderForCausalLM, DeepseekPreTrainedModel):
    """Drop-in for stock's DeepseekForCausalLM in inference (and deepseek's model where mindnlp has none)."""

    config_class = DeepseekConfig
    greedy_prefill_bucket_limit = PREFILL_BUCKET_LIMIT

    @classmethod
    def decoder_config(cls, config):
        return DecoderConfig.from_hf(config, qkv_bias=config.attention_bias, o_bias=config.attention_bias,
                                     rope_form="table")

    @classmethod
    def sparse_block(cls, config, index):
        return deepseek_moe(config) if is_sparse_layer(config, index) else None

    @classmethod
    def unsupported_reason(cls, config):
        if config.n_routed_experts is not None and not 0 < (config.num_experts_per_tok or 0) <= config.n_routed_experts:
            return f"num_experts_per_tok {config.num_experts_per_tok!r} with {config.n_routed_experts} routed experts"
        if config.scoring_func != "softmax":
            return f"scoring_func {config.scoring_func!r} (stock implements softmax only)"
        if config.pretraining_tp != 1:
            return f"pretraining_tp {config.pretraining_tp} (stock splits every projection)"
        if config.rope_scaling is not None:
            return f"rope_scaling {config.rope_scaling!r} (only default rope is implemented)"
        if config.hidden_act != "silu":
            return f"hidden_act {config.hidden_act!r}"
        if config.hidden_size % config.num_attention_heads:
            return "hidden_size not a multiple of num_attention_heads"
        return None
