"""The greedy loop: one step function over explicit device state, and the host loop around it.

`decode_step` is the per-token work: a forward over the static cache, the repetition penalty from a
fixed-shape mask of the ids seen so far, stock's argmax, EOS bookkeeping and the next positions. It
reads and returns a `DecodeState` of fixed-shape device tensors and makes no host sync, so it can be
compiled as one graph. `greedy_decode` runs it, reads one EOS flag every few steps, and trims the
output to the steps stock's loop would have run.
"""
from typing import NamedTuple, Optional

import numpy as np
import mindspore
from mindspore import ops

from mindnlp.core import ops as core_ops
from mindnlp.transformers.generation.utils import GenerateDecoderOnlyOutput

from .generation_compiled import COMPILED_CACHE_LENGTH_STEP, compiled_decode
from .layers.primitives import narrow


class DecodeState(NamedTuple):
    """What a step reads and hands to the next one (device tensors, fixed shapes after the prompt)."""

    cache_position: mindspore.Tensor  # int32 [S]: cache slots of this step's inputs
    position_ids: mindspore.Tensor  # int32 [B, S] ([3, B, S] for an M-RoPE prompt): their rope positions
    seen: Optional[mindspore.Tensor]  # bool [B, vocab]: ids seen so far, with a repetition penalty
    unfinished: Optional[mindspore.Tensor]  # bool [B]: rows not yet past EOS, with EOS ids


class StepConstants(NamedTuple):
    """What every step of one generate call shares."""

    attention_mask: Optional[mindspore.Tensor]  # [B, cache length] (1 real, 0 padding), None: no padding
    rope_offset: mindspore.Tensor  # int32 [B, 1]: rope position = cache position + offset (decode)
    penalty: Optional[float]
    eos: Optional[mindspore.Tensor]  # [E] EOS ids
    pad: Optional[mindspore.Tensor]  # the token a finished row receives
    true_column: Optional[mindspore.Tensor]  # bool [B, 1] of True: what marking a seen id writes


def positions_from_mask(attention_mask):
    """Stock's rope positions for a prompt mask [B, S]: running count of real tokens - 1, padding at 1."""
    mask = attention_mask.astype(mindspore.int32)
    positions = ops.cumsum(mask, -1) - 1
    return ops.masked_fill(positions, mask == 0, 1)


def cache_positions(start, stop):
    """Cache positions [start, stop) as int32, made from a host array: no launch, and
    ``mindspore.ops.arange`` fails for int32 once mindnlp is imported (mindspore-dev 2.6)."""
    return mindspore.Tensor(np.arange(start, stop, dtype=np.int32))


def mark_seen(seen, ids, value):
    """`seen` [B, V] with the ids [B, n] set to `value` (bool [B, n])."""
    return ops.tensor_scatter_elements(seen, ids, value, axis=1)


def apply_repetition_penalty(logits, seen, penalty):
    """Stock's repetition penalty over the seen ids: their logits multiplied by ``penalty`` where
    negative, divided by it elsewhere. Stock gathers the seen ids' logits, applies that and scatters
    them back (an id seen twice gets the same value twice); selecting by the mask gives each element
    the same value, with fixed shapes."""
    penalized = ops.where(logits < 0, logits * penalty, logits / penalty)
    return ops.where(seen, penalized, logits)


def is_eos(tokens, eos):
    """[B] bool: whether each token is one of the EOS ids ([E])."""
    return ops.equal(tokens.unsqueeze(1), eos.unsqueeze(0)).any(-1)


def decode_step(model, cache, inputs: dict, state: DecodeState, constants: StepConstants, kv_len: Optional[int]):
    """One step: `inputs` (input_ids, or the prompt's embeddings) at the state's positions, then the
    next tokens. Returns (logits [B, V], scores [B, V], tokens [B], the next step's DecodeState).
    kv_len: the filled cache length, or None to attend over the whole cache under the mask (the
    compiled step, generation_compiled)."""
    outputs = model(**inputs, attention_mask=constants.attention_mask, position_ids=state.position_ids, cache=cache,
                    cache_position=state.cache_position, logits_to_keep=1, kv_len=kv_len)
    logits = outputs.logits.reshape(outputs.logits.shape[0], -1)  # [B, 1, V]: logits_to_keep=1
    scores = logits
    seen, unfinished = state.seen, state.unfinished
    if constants.penalty is not None:
        scores = apply_repetition_penalty(logits, seen, constants.penalty)
    # Stock's own argmax, so ties (likely among bf16 logits) break the same way.
    tokens = core_ops.argmax(scores, dim=-1)
    if constants.eos is not None:
        # Same rule as stock: a finished row keeps receiving the pad token.
        tokens = ops.where(unfinished, tokens, constants.pad)
        unfinished = ops.logical_and(unfinished, ops.logical_not(is_eos(tokens, constants.eos)))
    if constants.penalty is not None:
        seen = mark_seen(seen, tokens.unsqueeze(1), constants.true_column)
    cache_position = narrow(state.cache_position, 0, state.cache_position.shape[0] - 1, 1) + 1
    return logits, scores, tokens, DecodeState(cache_position, constants.rope_offset + cache_position, seen, unfinished)


def first_state(model, plan, batch_size, prompt_length, cache_length):
    """The prompt step's DecodeState and the call's StepConstants."""
    config = plan.config
    eos, pad = config._eos_token_tensor, config._pad_token_tensor
    mask = plan.attention_mask
    if not bool((mask == 0).any()):
        mask = None  # no padding (one host read per call): decode steps then build no mask at all
    elif cache_length > prompt_length:
        # Written once: later columns are real tokens, and the cache position hides those not yet written.
        mask = ops.cat([mask, ops.ones((batch_size, cache_length - prompt_length), mask.dtype)], -1)
    position_ids, offset = model.greedy_positions(plan.input_ids, plan.attention_mask, plan.prefill_inputs)
    seen = true_column = None
    if plan.penalty is not None:
        true_column = ops.ones((batch_size, 1), mindspore.bool_)
        seen = ops.zeros((batch_size, model.config.vocab_size), mindspore.bool_)
        if plan.input_ids.shape[-1]:
            seen = mark_seen(seen, plan.input_ids, ops.ones(plan.input_ids.shape, mindspore.bool_))
    unfinished = ops.ones(batch_size, mindspore.bool_) if eos is not None else None
    state = DecodeState(cache_positions(0, prompt_length), position_ids, seen, unfinished)
    return state, StepConstants(mask, offset, plan.penalty, eos, pad, true_column)


def greedy_decode(model, plan, eos_check_every):
    """Run the plan's steps; read the EOS flags every `eos_check_every` steps (0: only at the end)."""
    config = plan.config
    keep_logits = config.return_dict_in_generate and config.output_logits
    keep_scores = config.return_dict_in_generate and config.output_scores
    prompt = plan.inputs_embeds if plan.inputs_embeds is not None else plan.input_ids
    batch_size, prompt_length = prompt.shape[0], prompt.shape[1]
    compiled = compiled_decode(model)
    needed = prompt_length + plan.steps - 1
    cache = (model.allocate_cache(batch_size, needed, COMPILED_CACHE_LENGTH_STEP) if compiled.usable
             else model.allocate_cache(batch_size, needed))
    state, constants = first_state(model, plan, batch_size, prompt_length, cache.max_len)
    check_every = eos_check_every if constants.eos is not None else 0
    inputs = {"inputs_embeds": plan.inputs_embeds} if plan.inputs_embeds is not None else {"input_ids": plan.input_ids}
    inputs.update(plan.prefill_inputs)

    tokens, logits_per_step, scores_per_step, unfinished_per_step = [], [], [], []
    for step in range(plan.steps):
        if step and compiled.usable:
            logits, scores, next_tokens, state = compiled.step(decode_step, model, cache, next_tokens, state,
                                                               constants, prompt_length + step)
        else:
            logits, scores, next_tokens, state = decode_step(model, cache, inputs, state, constants,
                                                             prompt_length + step)
        if keep_logits:
            logits_per_step.append(logits)
        if keep_scores:
            scores_per_step.append(scores)
        tokens.append(next_tokens)
        if state.unfinished is not None:
            unfinished_per_step.append(state.unfinished)
        last_step = step + 1 == plan.steps
        if check_every and (step + 1) % check_every == 0 and not last_step and not state.unfinished.any():
            break
        inputs = {"input_ids": next_tokens.unsqueeze(1)}

    steps_run = steps_stock_runs(unfinished_per_step, len(tokens))
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


def steps_stock_runs(unfinished_per_step, steps_done):
    """How many steps stock's loop would have run: it stops after the first step that leaves no row unfinished."""
    if not unfinished_per_step:
        return steps_done
    alive_after = ops.stack(unfinished_per_step).any(-1)
    return min(steps_done, int(alive_after.astype(mindspore.int32).sum()) + 1)
