"""Llama (Janus-Pro's language model, and any Llama checkpoint) on the shared decoder.

Numerics follow stock mindnlp 0.4 step by step: RMSNorm as stock LlamaRMSNorm runs it in
inference (the fused RmsNorm kernel where mindnlp takes its pyboost path, i.e. on Ascend; the fp32
composite cast back before the weight elsewhere), rope angles by a K=1 fp32 matmul per forward,
cos/sin cast to the activation dtype, eager attention divided by sqrt(head_dim) after the matmul
with an fp32 softmax (K/V repeated for grouped heads, as stock's repeat_kv), the gated MLP, logits
cast to fp32.
"""
from mindnlp.transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from ..layers.decoder import DecoderConfig
from .causal_lm import DecoderForCausalLM


class LlamaForCausalLM(DecoderForCausalLM, LlamaPreTrainedModel):
    """Drop-in for stock's LlamaForCausalLM in inference."""

    @classmethod
    def decoder_config(cls, config):
        return DecoderConfig.from_hf(config, qkv_bias=config.attention_bias, o_bias=config.attention_bias,
                                     rope_form="matmul", norm_kernel="stock_fused")

    @classmethod
    def unsupported_reason(cls, config):
        if config.pretraining_tp != 1:
            return f"pretraining_tp {config.pretraining_tp} (stock splits every projection)"
        if config.rope_scaling is not None:
            return f"rope_scaling {config.rope_scaling!r} (only default rope is implemented)"
        if config.mlp_bias:
            return "mlp_bias"
        if config.hidden_size % config.num_attention_heads:
            return "hidden_size not a multiple of num_attention_heads"
        return None
