"""The causal-LM base every decoder model of the series derives from: a DecoderModel, the LM head,
the model-owned static KV cache, the kernel prepare pass (`prepare`), and the forward generation drives.

A model file subclasses `DecoderForCausalLM` together with the stock PreTrainedModel of its
family (which gives config class, weight init and checkpoint naming; deepseek_base.py has one for a
mindnlp without deepseek) and supplies:
  `decoder_config(config)`  the DecoderConfig read from the Hugging Face config;
  `sparse_block(config, index)`  the MoE block of decoder layer `index`, or None for stock's gated MLP
                                 of `intermediate_size` (the default, every layer: Llama);
  `unsupported_reason(config)`  why our implementation cannot serve a config, or None;
and may set `output_class` (the ModelOutput stock's forward returns) and give `extra_modules(config)`,
the modules beside the decoder (a vision tower), built before the weights are initialised.
"""
from typing import Dict, Optional

import mindspore
from mindnlp.core import nn, ops
from mindnlp.transformers.modeling_outputs import CausalLMOutputWithPast

from .. import device
from ..cache import StaticKVCache
from ..generation import GreedyGenerationMixin
from ..layers.attention import decoder_mask
from ..layers.decoder import DecoderConfig, DecoderModel
from ..layers.linear import Linear
from ..layers.primitives import broadcast_to, narrow, take_along_positions
from ..layers.moe_experts import GatedMLP
from ..loading import StackedCheckpointMixin
from ..registry import StockFallbackMixin

CACHE_LENGTH_STEP = 256

# forward outputs stock's models can return and ours do not: asking for one is an error, not a None.
_NOT_RETURNED = ("output_attentions", "output_hidden_states", "output_router_logits")


class DecoderForCausalLM(StockFallbackMixin, GreedyGenerationMixin, StackedCheckpointMixin):
    """Drop-in for a stock *ForCausalLM in inference (generation: mindnlp.accel.generation)."""

    output_class = CausalLMOutputWithPast
    _tied_weights_keys = ["lm_head.weight"]

    @classmethod
    def decoder_config(cls, config) -> DecoderConfig:
        raise NotImplementedError(f"{cls.__name__} must map its config to a DecoderConfig")

    @classmethod
    def sparse_block(cls, config, index: int) -> Optional[nn.Module]:
        return None

    @classmethod
    def feed_forward(cls, config, index: int) -> nn.Module:
        """Decoder layer `index`'s MoE block, or the dense gated MLP where it has none."""
        sparse = cls.sparse_block(config, index)
        if sparse is not None:
            return sparse
        return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    @classmethod
    def unsupported_reason(cls, config) -> Optional[str]:
        return None

    def extra_modules(self, config) -> Dict[str, nn.Module]:
        return {}

    def __init__(self, config):
        super().__init__(config)
        self.decoder_spec = self.decoder_config(config)
        self.model = DecoderModel(self.decoder_spec, lambda index: self.feed_forward(config, index))
        self.vocab_size = config.vocab_size
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        for name, module in self.extra_modules(config).items():
            setattr(self, name, module)
        self._cache = None
        self.post_init()

    @classmethod
    def supports(cls, config):
        expected = cls.config_class.model_type
        if getattr(config, "model_type", None) != expected:
            reason = f"model_type {getattr(config, 'model_type', None)!r} is not {expected}"
        elif getattr(config, "_attn_implementation", "eager") != "eager":
            reason = f"attention implementation {config._attn_implementation!r} (stock has eager only)"
        else:
            reason = cls.unsupported_reason(config)
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

    def prepare(self, batch_size: int) -> None:
        """Settle every kernel choice (device self-checks, fused projections, CPU weight copies) for
        `batch_size` rows in the model's dtype, before the first forward that uses them. Forwards
        of unprepared shapes run the portable twins, which give the same bits."""
        device.prepare_kernels(self, self.lm_head.weight.dtype, batch_size)

    def allocate_cache(self, batch_size, max_len, length_step=CACHE_LENGTH_STEP):
        """The model's static KV cache for batch_size rows of at least max_len positions, with the
        kernels prepared for that batch size.

        Lengths are rounded up to length_step so that successive generate calls (the judge's
        prefill call, then its decode call, then the next prompt) reuse one allocation.
        """
        config = self.config
        if max_len > config.max_position_embeddings:
            raise ValueError(f"{max_len} positions exceed max_position_embeddings "
                             f"({config.max_position_embeddings}) of this model")
        self.prepare(batch_size)
        cache = self._cache
        if cache is not None and cache.batch_size == batch_size and max_len <= cache.max_len:
            return cache
        length = min(-(-max_len // length_step) * length_step, config.max_position_embeddings)
        spec = self.decoder_spec
        self._cache = None  # free the old buffers before allocating new ones
        self._cache = StaticKVCache(spec.num_layers, batch_size, spec.num_kv_heads, length, spec.head_size,
                                    dtype=self.lm_head.weight.dtype)
        return self._cache

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                cache=None, cache_position=None, logits_to_keep=0, logits_at=None, return_dict=None, kv_len=None,
                **unused):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        refused = [name for name in _NOT_RETURNED if unused.get(name)]
        refused += ["labels"] if unused.get("labels") is not None else []
        # the caller wants stock's cache API (past_key_values in and out), which ours does not return
        refused += ["past_key_values"] if "past_key_values" in unused else []
        if refused:
            raise ValueError(f"{type(self).__name__} (mindnlp.accel) does not support {', '.join(refused)}: it is for "
                             "inference over its own static cache and returns logits only; load the stock class "
                             "(MINDNLP_ACCEL=0, or mindnlp.accel.stock_class) for these")
        hidden = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, steps = hidden.shape[:2]
        if cache is None:
            query_slots = ops.arange(steps, dtype=mindspore.int32)
        elif cache_position is None:
            raise ValueError("a forward over the cache needs cache_position")
        else:
            query_slots = cache_position
        if position_ids is None:
            position_ids = broadcast_to(query_slots.reshape(1, steps), (batch, steps))
        mask = decoder_mask(attention_mask, batch, query_slots, cache.max_len if cache is not None else steps,
                            kv_len, hidden.dtype)
        if mask is not None and steps > 1 and not device.pyboost():
            mask = mask.per_head(self.decoder_spec.num_heads)  # see AttentionMask.per_head
        hidden = self.model(hidden, position_ids, mask, cache, cache_position, kv_len)
        if logits_at is not None:
            hidden = take_along_positions(hidden, logits_at)
        elif 0 < logits_to_keep < steps:
            hidden = narrow(hidden, 1, steps - logits_to_keep, logits_to_keep)
        logits = self.lm_head(hidden).float()
        return self.output_class(logits=logits)
