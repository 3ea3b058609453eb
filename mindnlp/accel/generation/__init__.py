"""Greedy decoding over a model-owned static KV cache with no per-step host sync; stock ``generate`` for the rest.

A model class gets this by listing ``GreedyGenerationMixin`` before its PreTrainedModel base. It must provide:

``allocate_cache(batch_size, max_len, length_step=...) -> cache``
    A static KV cache for ``batch_size`` rows and at least ``max_len`` positions (``cache.max_len``, a multiple
    of ``length_step`` where given) in the model's dtype, owned by the model (it may hand back a cache it already
    holds when the shape fits: the masks hide its old contents).

``forward(input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None,
cache_position=None, logits_to_keep=0, logits_at=None, return_dict=None, kv_len=None, **prefill_inputs)``
    Runs ``S`` new positions (``input_ids`` [B, S] or ``inputs_embeds`` [B, S, H]) whose K/V go into ``cache`` at
    ``cache_position`` (device int32 [S]); ``position_ids`` is a device int32 [B, S] (rope positions, which differ
    from cache positions under left padding); ``attention_mask`` is [B, cache max_len] with 1 for real tokens and 0
    for padding, its columns at and after the first unwritten position being 1 (causality masks them); None means
    no padding. ``logits_to_keep=k`` runs the LM head on the last ``k`` positions only (0 = all); ``logits_at``
    (a device int32 [1]) on that one position instead (a prompt right-padded to a bucket). ``kv_len`` is
    the number of cache positions filled once this step is written, known on the host: attending over exactly
    those keys, as stock does, rather than over the whole static cache keeps every sum in stock's order (with
    the whole cache, masked zeros change the kernels' blocking and so the last bits).
    ``return_dict`` is accepted and ignored. Returns an object whose ``.logits`` is [B, k, vocab] in the dtype
    stock's model returns. ``prefill_inputs`` are the names in ``greedy_prefill_inputs`` (e.g. ``pixel_values``),
    passed on the first call only, unless ``prefill_forward_inputs`` folded them into embeddings.

Position ids follow stock's text models (cumsum of the mask - 1, pads at 1), made on the host; a model with
other positions (M-RoPE) overrides ``greedy_positions``.

The work is in parts: plan (which calls the fast path serves, resolved by stock's own helpers), step (the
per-token step function over explicit state), loop (the loop around it), decode_graph and prefill_graph
(those steps compiled, graphs.GraphSet deciding where they serve), step_graph (what the two share) and
stock (the hooks through which stock's loops drive the same model for everything else).
"""

import logging

import numpy as np

from mindnlp.core import no_grad

from .loop import greedy_decode
from .plan import greedy_plan, is_set
from .stock import StockLoopAdapters

logger = logging.getLogger(__name__)


class GreedyGenerationMixin(StockLoopAdapters):
    """``generate`` that decodes greedily without per-step host syncs, and stock's loops over the static cache.

    The fast path is taken when all of these hold; otherwise stock's ``generate`` runs (over this model, through
    the adapters of generation_stock) and gives stock's result:
    - greedy mode (``do_sample=False``, ``num_beams=1``, no contrastive/DoLa/assistant), ``num_return_sequences=1``,
      ``use_cache=True``, no ``cache_implementation``, no ``token_healing``;
    - no ``logits_processor``, ``stopping_criteria``, ``prefix_allowed_tokens_fn``, ``streamer``,
      ``synced_devices``, ``assistant_model`` or negative prompt;
    - the logits processors stock builds from the generation config are at most a repetition penalty, and there
      are no ``max_time`` or ``stop_strings`` criteria;
    - no ``output_attentions`` / ``output_hidden_states``;
    - model kwargs are only ``attention_mask`` (2D), ``inputs_embeds``, ``input_ids`` and ``greedy_prefill_inputs``.

    Host syncs per call: the few stock's own preparation makes (special tokens, inferred attention mask), one
    to learn whether the prompt has padding, one every ``greedy_eos_check_every`` steps while an EOS id is set
    (0 = none until the end), and one at the end to trim the output to the steps stock would have run. The
    output equals stock's: ``sequences``, and per step ``logits`` / ``scores`` when asked; ``past_key_values``
    is None because the cache stays with the model.
    """

    greedy_eos_check_every = 4
    greedy_prefill_inputs = ()
    # The longest prompt a prefill graph takes (None: the largest bucket); it also bounds the first cache.
    greedy_prefill_bucket_limit = None

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
        if any(is_set(option) for option in custom):
            plan, reason = None, "custom processors, criteria, streamer, assistant or negative prompt"
        else:
            plan, reason = greedy_plan(self, inputs, generation_config, dict(kwargs))
        if plan is None:
            logger.debug("%s: stock generate (%s)", type(self).__name__, reason)
            return super().generate(
                inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
                synced_devices, assistant_model, streamer, negative_prompt_ids, negative_prompt_attention_mask,
                **kwargs,
            )
        return greedy_decode(self, plan, self.greedy_eos_check_every)

    def greedy_positions(self, input_ids, attention_mask, prefill_inputs):
        """Rope positions of the prompt (int [B, S], or [3, B, S] with M-RoPE) and the per-row offset [B, 1]
        that turns a cache position into a rope position during decode (for a real token at cache position c,
        stock's position is c + offset), as NumPy arrays, from the prompt's ids and mask as NumPy arrays [B, S]
        and the call's greedy_prefill_inputs (image grids). Stock's text models: the running count of real
        tokens - 1, padding at 1."""
        mask = attention_mask.astype(np.int64)
        positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
        return positions, mask.sum(-1, keepdims=True) - mask.shape[1]

    def prefill_forward_inputs(self, inputs: dict) -> dict:
        """The prompt step's forward inputs from the call's (ids or embeddings, and greedy_prefill_inputs):
        a model folds what it can of the prefill-only inputs into embeddings here (Qwen2-VL: its vision
        tower and merge), so that the step is a plain decoder step the prefill graph serves."""
        return inputs
