"""Stock's own generation loops (sampling, beams, custom processors...) over our model and its static cache.

Stock's ``generate`` drives the model through these four hooks; they hand it the model-owned cache
and the forward arguments our models take, so every option the greedy fast path does not serve
still gives stock's result over the same model.
"""
import numpy as np
import mindspore
from mindspore import ops

from mindnlp.transformers.generation.configuration_utils import GenerationMode

from .step import cache_positions

# Modes whose stock loops crop or copy the cache, which a static cache owned by the model does not offer.
_NEEDS_DYNAMIC_CACHE = (
    GenerationMode.ASSISTED_GENERATION,
    GenerationMode.CONTRASTIVE_SEARCH,
    GenerationMode.DOLA_GENERATION,
)


class StockLoopAdapters:
    """The hooks of stock's GenerationMixin that our models override (list before the PreTrainedModel)."""

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, assistant_model, batch_size,
                                      max_cache_length):
        mode = generation_config.get_generation_mode(assistant_model)
        if mode in _NEEDS_DYNAMIC_CACHE:
            raise NotImplementedError(
                f"{type(self).__name__} keeps a static KV cache and does not support {mode}; "
                "use the stock class (mindnlp.accel.registry.stock_class) for it."
            )
        if model_kwargs.get("past_key_values") is not None:
            raise ValueError(f"{type(self).__name__} owns its KV cache; do not pass `past_key_values`.")
        rows = batch_size * max(generation_config.num_beams, generation_config.num_return_sequences)
        cache = self.allocate_cache(rows, max_cache_length)
        model_kwargs["past_key_values"] = cache
        model_kwargs["cache_length"] = cache.max_len

    def _get_initial_cache_position(self, input_ids, model_kwargs):
        if "inputs_embeds" in model_kwargs:
            length = model_kwargs["inputs_embeds"].shape[1]
        else:
            length = input_ids.shape[1]
        model_kwargs["cache_position"] = cache_positions(0, length)
        # Called once per generate, after stock made the attention mask and expanded the rows (beams):
        # the prompt's rope positions and the offset later steps add to their cache position.
        positions, offset = self.greedy_positions(
            input_ids.asnumpy(), model_kwargs["attention_mask"].asnumpy(),
            {name: model_kwargs[name] for name in self.greedy_prefill_inputs if model_kwargs.get(name) is not None})
        model_kwargs["prompt_positions"] = mindspore.Tensor(positions.astype(np.int32))
        model_kwargs["rope_offset"] = mindspore.Tensor(offset.astype(np.int32))
        return model_kwargs

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, cache_position=None, cache_length=None,
                                      prompt_positions=None, rope_offset=None, **kwargs):
        new_length = cache_position.shape[0]
        # A host read, as stock does: this adapter serves the fallback loops, which sync every step anyway.
        start = int(cache_position[0])
        first_step = start == 0
        position_ids = rope_positions(prompt_positions, rope_offset, cache_position, start)
        tail = cache_length - attention_mask.shape[1]
        if tail:
            attention_mask = ops.cat([attention_mask, ops.ones((attention_mask.shape[0], tail),
                                                               attention_mask.dtype)], -1)
        if inputs_embeds is not None and first_step:
            model_inputs = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids[:, -new_length:]}
        if first_step:
            model_inputs.update({name: kwargs[name] for name in self.greedy_prefill_inputs if name in kwargs})
        model_inputs.update(attention_mask=attention_mask, position_ids=position_ids, cache=past_key_values,
                            cache_position=cache_position, logits_to_keep=1,
                            kv_len=int(cache_position[-1]) + 1)
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        cache = model_kwargs["past_key_values"]
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        model_kwargs["past_key_values"] = cache
        return model_kwargs


def rope_positions(prompt_positions, rope_offset, cache_position, start: int):
    """Rope positions of the slots `cache_position` (starting at host int `start`): the prompt's own
    for prompt slots, cache position + the row's offset after them (without a cache, stock's loop
    runs the whole sequence every step)."""
    new_length = cache_position.shape[0]
    from_prompt = prompt_positions[..., start:start + new_length]
    later = new_length - from_prompt.shape[-1]
    if not later:
        return from_prompt
    positions = rope_offset + cache_position[new_length - later:].reshape(1, later)
    if prompt_positions.ndim == 3:  # M-RoPE: the same position on every stream
        positions = positions.unsqueeze(0).broadcast_to((3,) + tuple(positions.shape))
    if not from_prompt.shape[-1]:
        return positions
    return ops.cat([from_prompt.astype(positions.dtype), positions], -1)
