"""Greedy decoding over a model-owned static KV cache with no per-step host sync; stock ``generate`` for the rest.

A model class gets this by listing ``GreedyGenerationMixin`` first among its bases. It must provide:

``allocate_cache(batch_size, max_len) -> cache``
    A static KV cache for ``batch_size`` rows and at least ``max_len`` positions (``cache.max_len``) in the model's
    dtype, owned by the model (it may hand back a cache it already holds when the shape fits: the masks hide
    its old contents).

``forward(input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None,
cache_position=None, logits_to_keep=0, return_dict=None, kv_len=None, **prefill_inputs)``
    Runs ``S`` new positions (``input_ids`` [B, S] or ``inputs_embeds`` [B, S, H]) whose K/V go into ``cache`` at
    ``cache_position`` (device int32 [S]); ``position_ids`` is a device int32 [B, S] (rope positions, which differ
    from cache positions under left padding); ``attention_mask`` is [B, cache max_len] with 1 for real tokens and 0
    for padding, its columns at and after the first unwritten position being 1 (causality masks them); None means
    no padding. ``logits_to_keep=k`` runs the LM head on the last ``k`` positions only (0 = all). ``kv_len`` is
    the number of cache positions filled once this step is written, known on the host: attending over exactly
    those keys, as stock does, rather than over the whole static cache keeps every sum in stock's order (with
    the whole cache, masked zeros change the kernels' blocking and so the last bits).
    ``return_dict`` is accepted and ignored. Returns an object whose ``.logits`` is [B, k, vocab] in the dtype
    stock's model returns. ``prefill_inputs`` are the names in ``greedy_prefill_inputs`` (e.g. ``pixel_values``),
    passed on the first call only.

Position ids follow stock's text models (cumsum of the mask - 1, pads at 1); a model with other positions
(M-RoPE) overrides ``greedy_positions``.
"""

from dataclasses import dataclass
import logging
from typing import Optional

import numpy as np
import mindspore
from mindspore import ops

from mindnlp.core import no_grad
from mindnlp.core import ops as core_ops
from mindnlp.transformers.generation.configuration_utils import GenerationMode
from mindnlp.transformers.generation.logits_process import LogitsProcessorList, RepetitionPenaltyLogitsProcessor
from mindnlp.transformers.generation.utils import GenerateDecoderOnlyOutput

logger = logging.getLogger(__name__)

# Model kwargs the fast path understands; anything else sends the call to stock.
_KNOWN_MODEL_KWARGS = frozenset({"attention_mask", "inputs_embeds", "input_ids"})

# Modes whose stock loops crop or copy the cache, which a static cache owned by the model does not offer.
_NEEDS_DYNAMIC_CACHE = (
    GenerationMode.ASSISTED_GENERATION,
    GenerationMode.CONTRASTIVE_SEARCH,
    GenerationMode.DOLA_GENERATION,
)


def positions_from_mask(attention_mask):
    """Stock's rope positions for a prompt mask [B, S]: running count of real tokens - 1, padding at 1."""
    mask = attention_mask.astype(mindspore.int32)
    positions = ops.cumsum(mask, -1) - 1
    return ops.masked_fill(positions, mask == 0, 1)


@dataclass
class _GreedyPlan:
    """Everything the fast loop needs, resolved by stock's own helpers from the ``generate`` call."""

    config: object
    input_ids: mindspore.Tensor
    inputs_embeds: Optional[mindspore.Tensor]
    attention_mask: mindspore.Tensor
    prefill_inputs: dict
    steps: int
    penalty: Optional[float]


class GreedyGenerationMixin:
    """``generate`` that decodes greedily without per-step host syncs, and stock's loops over the static cache.

    The fast path is taken when all of these hold; otherwise stock's ``generate`` runs (over this model, through
    the adapter methods below) and gives stock's result:
    - greedy mode (``do_sample=False``, ``num_beams=1``, no contrastive/DoLa/assistant), ``num_return_sequences=1``,
      ``use_cache=True``, no ``cache_implementation``, no ``token_healing``;
    - no ``logits_processor``, ``stopping_criteria``, ``prefix_allowed_tokens_fn``, ``streamer``,
      ``synced_devices``, ``assistant_model`` or negative prompt;
    - the logits processors stock builds from the generation config are at most a repetition penalty, and there
      are no ``max_time`` or ``stop_strings`` criteria;
    - no ``output_attentions`` / ``output_hidden_states``;
    - model kwargs are only ``attention_mask`` (2D), ``inputs_embeds``, ``input_ids`` and ``greedy_prefill_inputs``.

    Host syncs per call: the few stock's own preparation makes (special tokens, inferred attention mask), one
    to learn whether the prompt has padding, one every ``greedy_eos_check_every`` steps while an EOS id is set (0 = none until the end), and one at the end to
    trim the output to the steps stock would have run. The output equals stock's: ``sequences``, and per step
    ``logits`` / ``scores`` when asked; ``past_key_values`` is None because the cache stays with the model.
    """

    greedy_eos_check_every = 4
    greedy_prefill_inputs = ()

    @no_grad()
    def generate(
        self,
        inputs=None,
        generation_config=None,
        logits_processor=None,
        stopping_criteria=None,
        prefix_allowed_tokens_fn=None,
        synced_devices=None,
        assistant_model=None,
        streamer=None,
        negative_prompt_ids=None,
        negative_prompt_attention_mask=None,
        **kwargs,
    ):
        custom = (logits_processor, stopping_criteria, prefix_allowed_tokens_fn, synced_devices, assistant_model,
                  streamer, negative_prompt_ids, negative_prompt_attention_mask)
        if any(_is_set(option) for option in custom):
            plan, reason = None, "custom processors, criteria, streamer, assistant or negative prompt"
        else:
            plan, reason = self._greedy_plan(inputs, generation_config, dict(kwargs))
        if plan is None:
            logger.debug("%s: stock generate (%s)", type(self).__name__, reason)
            return super().generate(
                inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
                synced_devices, assistant_model, streamer, negative_prompt_ids, negative_prompt_attention_mask,
                **kwargs,
            )
        return self._greedy_decode(plan)

    def greedy_positions(self, attention_mask):
        """Rope positions for the prompt [B, S] and the per-row offset [B, 1] that turns a cache position into a
        rope position during decode (for a real token at cache position c, stock's position is c + offset)."""
        offset = attention_mask.astype(mindspore.int32).sum(-1, keepdims=True) - attention_mask.shape[1]
        return positions_from_mask(attention_mask), offset

    def _greedy_plan(self, inputs, generation_config, kwargs):
        """Resolve the call as stock would; return (plan, None) for the fast path or (None, reason)."""
        kwargs.pop("tokenizer", None)  # only stop strings use it, and those fall back
        config, model_kwargs = self._prepare_generation_config(generation_config, **kwargs)
        reason = self._greedy_unsupported(config)
        if reason:
            return None, reason
        has_mask = model_kwargs.get("attention_mask") is not None
        inputs_tensor, input_name, model_kwargs = self._prepare_model_inputs(
            inputs, config.bos_token_id, model_kwargs
        )
        given = {name for name, value in model_kwargs.items() if value is not None}
        unknown = given - _KNOWN_MODEL_KWARGS - set(self.greedy_prefill_inputs)
        if unknown:
            return None, f"model kwargs {sorted(unknown)}"
        if has_mask and model_kwargs["attention_mask"].ndim != 2:
            return None, "attention_mask is not 2D"

        self._prepare_special_tokens(config, has_mask)
        if input_name == "input_ids":
            input_ids, inputs_embeds = inputs_tensor, None
        else:
            input_ids, inputs_embeds = model_kwargs.pop("input_ids"), inputs_tensor
        if has_mask:
            attention_mask = model_kwargs["attention_mask"]
        else:
            attention_mask = self._prepare_attention_mask_for_generation(
                inputs_tensor, config._pad_token_tensor, config._eos_token_tensor
            )

        ids_length = input_ids.shape[-1]
        has_default_max_length = kwargs.get("max_length") is None and config.max_length is not None
        config = self._prepare_generated_length(
            generation_config=config,
            has_default_max_length=has_default_max_length,
            has_default_min_length=kwargs.get("min_length") is None and config.min_length is not None,
            model_input_name=input_name,
            input_ids_length=ids_length,
            inputs_tensor=inputs_tensor,
        )
        self._validate_generated_length(config, ids_length, has_default_max_length)

        penalty = None
        processors = self._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=ids_length,
            encoder_input_ids=inputs_tensor,
            prefix_allowed_tokens_fn=None,
            logits_processor=LogitsProcessorList(),
            model_kwargs={"use_cache": True},
        )
        for processor in processors:
            if type(processor) is not RepetitionPenaltyLogitsProcessor:
                return None, f"logits processor {type(processor).__name__}"
            penalty = processor.penalty

        prefill_inputs = {name: model_kwargs[name] for name in self.greedy_prefill_inputs if name in given}
        plan = _GreedyPlan(
            config=config,
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            prefill_inputs=prefill_inputs,
            steps=config.max_length - ids_length,
            penalty=penalty,
        )
        return plan, None

    def _greedy_unsupported(self, config):
        """Why the resolved generation config needs stock's loop, or None."""
        mode = config.get_generation_mode(None)
        checks = (
            (mode != GenerationMode.GREEDY_SEARCH, f"generation mode {mode}"),
            (config.num_return_sequences != 1, "num_return_sequences != 1"),
            (not config.use_cache, "use_cache=False"),
            (config.cache_implementation is not None, "cache_implementation"),
            (config.token_healing, "token_healing"),
            (config.output_attentions or config.output_hidden_states, "attentions or hidden states requested"),
            (config.max_time is not None or config.stop_strings is not None, "max_time or stop_strings"),
            (self.config.is_encoder_decoder, "encoder-decoder model"),
        )
        return next((reason for failed, reason in checks if failed), None)

    def _greedy_decode(self, plan):
        """The decode loop: device-side token choice, EOS bookkeeping and repetition penalty; trims at the end."""
        config = plan.config
        eos = config._eos_token_tensor
        pad = config._pad_token_tensor
        keep_logits = config.return_dict_in_generate and config.output_logits
        keep_scores = config.return_dict_in_generate and config.output_scores
        check_every = self.greedy_eos_check_every if eos is not None else 0

        prompt = plan.inputs_embeds if plan.inputs_embeds is not None else plan.input_ids
        batch_size, prompt_length = prompt.shape[0], prompt.shape[1]
        cache = self.allocate_cache(batch_size, prompt_length + plan.steps - 1)
        mask = plan.attention_mask
        if not bool((mask == 0).any()):
            mask = None  # no padding (one host read per call): decode steps then build no mask at all
        elif cache.max_len > prompt_length:
            # Written once: later columns are real tokens, and the cache position hides those not yet written.
            mask = ops.cat([mask, ops.ones((batch_size, cache.max_len - prompt_length), mask.dtype)], -1)
        position_ids, offset = self.greedy_positions(plan.attention_mask)
        cache_position = _positions(0, prompt_length)
        step_inputs = {"inputs_embeds": plan.inputs_embeds} if plan.inputs_embeds is not None else {
            "input_ids": plan.input_ids}
        step_inputs.update(plan.prefill_inputs)

        seen_ids = plan.input_ids  # every id so far, as stock's penalty reads them: [B, n]
        unfinished = ops.ones(batch_size, mindspore.bool_) if eos is not None else None
        tokens, logits_per_step, scores_per_step, unfinished_per_step = [], [], [], []
        for step in range(plan.steps):
            outputs = self(**step_inputs, attention_mask=mask, position_ids=position_ids, cache=cache,
                           cache_position=cache_position, logits_to_keep=1, kv_len=prompt_length + step)
            logits = outputs.logits[:, -1, :]
            scores = logits
            if plan.penalty is not None and seen_ids.shape[-1]:
                scores = _apply_repetition_penalty(logits, seen_ids, plan.penalty)
            if keep_logits:
                logits_per_step.append(logits)
            if keep_scores:
                scores_per_step.append(scores)

            # Stock's own argmax, so ties (likely among bf16 logits) break the same way.
            next_tokens = core_ops.argmax(scores, dim=-1)
            if eos is not None:
                # Same rule as stock: a finished row keeps receiving the pad token.
                next_tokens = ops.where(unfinished, next_tokens, pad)
                unfinished = ops.logical_and(unfinished, ops.logical_not(_is_eos(next_tokens, eos)))
                unfinished_per_step.append(unfinished)
            tokens.append(next_tokens)
            if plan.penalty is not None:
                seen_ids = ops.cat([seen_ids, next_tokens.astype(seen_ids.dtype).unsqueeze(-1)], -1)
            last_step = step + 1 == plan.steps
            if check_every and (step + 1) % check_every == 0 and not last_step and not unfinished.any():
                break

            cache_position = cache_position[-1:] + 1
            position_ids = offset + cache_position
            step_inputs = {"input_ids": next_tokens[:, None]}

        steps_run = _steps_stock_runs(unfinished_per_step, len(tokens))
        new_tokens = ops.stack(tokens[:steps_run], 1)
        if plan.input_ids.shape[-1]:
            sequences = ops.cat([plan.input_ids, new_tokens.astype(plan.input_ids.dtype)], -1)
        else:
            sequences = new_tokens
        if not config.return_dict_in_generate:
            return sequences
        return GenerateDecoderOnlyOutput(
            sequences=sequences,
            scores=tuple(scores_per_step[:steps_run]) if keep_scores else None,
            logits=tuple(logits_per_step[:steps_run]) if keep_logits else None,
        )

    # Stock's loops (sampling, beams, custom processors...) drive the same forward through these adapters.

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
        model_kwargs["cache_position"] = _positions(0, length)
        return model_kwargs

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, cache_position=None, cache_length=None, **kwargs):
        new_length = cache_position.shape[0]
        # A host read, as stock does: this adapter serves the fallback loops, which sync every step anyway.
        first_step = int(cache_position[0]) == 0
        # Stock's generate always passes a 2D mask here, since our forward accepts one.
        position_ids = positions_from_mask(attention_mask)[:, -new_length:]
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


def _positions(start, stop):
    """Cache positions [start, stop) as int32, made on the host (mindnlp's patches break ``ops.arange`` here)."""
    return mindspore.Tensor(np.arange(start, stop, dtype=np.int32))


def _is_set(option):
    """Whether a stock ``generate`` argument asks for something (empty lists and False ask for nothing)."""
    if option is None or option is False:
        return False
    return not (isinstance(option, list) and not option)


def _is_eos(tokens, eos):
    """[B] bool: whether each token is one of the EOS ids ([E])."""
    return ops.equal(tokens[:, None], eos[None, :]).any(-1)


def _apply_repetition_penalty(logits, seen_ids, penalty):
    """Stock's repetition penalty: the logits of the ids in ``seen_ids`` [B, n] (repeats allowed) multiplied
    by ``penalty`` where negative, divided by it elsewhere; gathered and scattered back as stock does, which
    touches n values instead of the whole vocabulary."""
    picked = ops.gather_elements(logits, 1, seen_ids)
    picked = ops.where(picked < 0, picked * penalty, picked / penalty)
    return ops.tensor_scatter_elements(logits, seen_ids, picked, axis=1)


def _steps_stock_runs(unfinished_per_step, steps_done):
    """How many steps stock's loop would have run: it stops after the first step that leaves no row unfinished."""
    if not unfinished_per_step:
        return steps_done
    alive_after = ops.stack(unfinished_per_step).any(-1)
    return min(steps_done, int(alive_after.astype(mindspore.int32).sum()) + 1)
