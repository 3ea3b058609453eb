"""One greedy step over explicit device state: what the loop runs, and what the graphs compile.

`decode_step` is a forward over the static cache, the repetition penalty from a fixed-shape mask of
the ids seen so far, stock's argmax, EOS bookkeeping and the next positions. It reads and returns a
`DecodeState` of fixed-shape device tensors and makes no host sync, so it can be compiled as one
graph: the decode step (decode_graph) and the prompt padded to a bucket length (prefill_graph).
"""
from typing import NamedTuple, Optional

import numpy as np
import mindspore
from mindspore import ops

from mindnlp.core import ops as core_ops

from ..layers.primitives import narrow


class DecodeState(NamedTuple):
    """What a step reads and hands to the next one (device tensors, fixed shapes after the prompt)."""

    cache_position: mindspore.Tensor  # int32 [S]: cache slots of this step's inputs
    position_ids: mindspore.Tensor  # int32 [B, S] ([3, B, S] for an M-RoPE prompt): their rope positions
    seen: Optional[mindspore.Tensor]  # bool [B, vocab]: ids seen so far, with a repetition penalty
    unfinished: Optional[mindspore.Tensor]  # bool [B]: rows not yet past EOS, with EOS ids


class PromptOnHost(NamedTuple):
    """The prompt's ids and rope positions as NumPy arrays (what padding it to a bucket needs)."""

    ids: np.ndarray  # [B, S] (S = 0 for a prompt of embeddings)
    positions: np.ndarray  # [B, S], or [3, B, S] with M-RoPE


class StepConstants(NamedTuple):
    """What every step of one generate call shares."""

    attention_mask: Optional[mindspore.Tensor]  # [B, cache length] (1 real, 0 padding), None: no padding
    rope_offset: mindspore.Tensor  # int32 [B, 1]: rope position = cache position + offset (decode)
    penalty: Optional[float]
    eos: Optional[mindspore.Tensor]  # [E] EOS ids
    pad: Optional[mindspore.Tensor]  # the token a finished row receives
    true_column: Optional[mindspore.Tensor]  # bool [B, 1] of True: what marking a seen id writes


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


def decode_step(model, cache, inputs: dict, state: DecodeState, constants: StepConstants, kv_len: Optional[int],
                last: Optional[mindspore.Tensor] = None):
    """One step: `inputs` (input_ids, or the prompt's embeddings) at the state's positions, then the
    next tokens. Returns (logits [B, V], scores [B, V], tokens [B], the next step's DecodeState).
    kv_len: the filled cache length, or None to attend over the whole cache under the mask (the
    compiled decode step). last: int32 [1], the slot of the position whose logits count, for a prompt
    right-padded to a bucket (prefill_graph); None: the last of the step's slots."""
    keep = {"logits_to_keep": 1} if last is None else {"logits_at": last}
    outputs = model(**inputs, attention_mask=constants.attention_mask, position_ids=state.position_ids, cache=cache,
                    cache_position=state.cache_position, kv_len=kv_len, **keep)
    logits = outputs.logits.reshape(outputs.logits.shape[0], -1)  # [B, 1, V]: one position kept
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
    if last is None:
        last = narrow(state.cache_position, 0, state.cache_position.shape[0] - 1, 1)
    cache_position = last + 1
    return logits, scores, tokens, DecodeState(cache_position, constants.rope_offset + cache_position, seen, unfinished)


def first_state(model, plan, batch_size, prompt_length, cache_length):
    """The prompt step's DecodeState, the call's StepConstants and the PromptOnHost, built on the host
    from the prompt's ids and mask: the tokenizer made those there, so reading them back waits for no
    device work (two reads, the only host reads of a prefill), and the state costs no launch."""
    config = plan.config
    eos, pad = config._eos_token_tensor, config._pad_token_tensor
    mask = plan.attention_mask.asnumpy()
    ids = plan.input_ids.asnumpy() if plan.input_ids.shape[-1] else np.zeros((batch_size, 0), np.int64)
    positions, offset = model.greedy_positions(ids, mask, plan.prefill_inputs)
    attention_mask = None  # no padding: decode steps then build no mask at all
    if not mask.all():
        # Written once: later columns are real tokens, and the cache position hides those not yet written.
        tail = np.ones((batch_size, cache_length - prompt_length), mask.dtype)
        attention_mask = mindspore.Tensor(np.concatenate([mask, tail], -1))
    seen = true_column = None
    if plan.penalty is not None:
        true_column = mindspore.Tensor(np.ones((batch_size, 1), np.bool_))
        marked = np.zeros((batch_size, model.config.vocab_size), np.bool_)
        np.put_along_axis(marked, ids, True, 1)
        seen = mindspore.Tensor(marked)
    unfinished = mindspore.Tensor(np.ones(batch_size, np.bool_)) if eos is not None else None
    state = DecodeState(cache_positions(0, prompt_length), mindspore.Tensor(positions.astype(np.int32)), seen,
                        unfinished)
    constants = StepConstants(attention_mask, mindspore.Tensor(offset.astype(np.int32)), plan.penalty, eos, pad,
                              true_column)
    return state, constants, PromptOnHost(ids, positions)
