"""The greedy loop: the prompt's step, then one step per token, with one EOS read every few steps.

The steps are step.decode_step; the prompt's runs by its bucket's graph (prefill_graph) and every
later one by the decode step's graph (decode_graph) where those are trusted. The output is trimmed
to the steps stock's loop would have run.
"""
import mindspore
from mindspore import ops

from mindnlp.transformers.generation.utils import GenerateDecoderOnlyOutput

from .decode_graph import compiled_decode, compiled_step
from .prefill_graph import compiled_prefill, largest_bucket, prefill
from .step import decode_step, first_state

# While graphs may be used, cache lengths are rounded up to this (else to causal_lm's 256), and the
# first cache holds the model's largest prefill bucket and DECODE_RESERVE positions after it: each cache is
# a set of graphs of its own, so the judge's prompts (the longest about a thousand positions, plus
# 50 new tokens) must share the one its warm-up compiled. Masked slots cost a longer attention.
COMPILED_CACHE_LENGTH_STEP = 256
DECODE_RESERVE = 256


def greedy_decode(model, plan, eos_check_every):
    """Run the plan's steps; read the EOS flags every `eos_check_every` steps (0: only at the end)."""
    config = plan.config
    keep_logits = config.return_dict_in_generate and config.output_logits
    keep_scores = config.return_dict_in_generate and config.output_scores
    prompt = plan.inputs_embeds if plan.inputs_embeds is not None else plan.input_ids
    batch_size, prompt_length = prompt.shape[0], prompt.shape[1]
    compiled = compiled_decode(model)
    needed = prompt_length + plan.steps - 1
    if compiled.usable or compiled_prefill(model).usable:
        floor = min((largest_bucket(model) or 0) + DECODE_RESERVE, model.config.max_position_embeddings)
        cache = model.allocate_cache(batch_size, max(needed, floor), COMPILED_CACHE_LENGTH_STEP)
    else:
        cache = model.allocate_cache(batch_size, needed)
    state, constants, host = first_state(model, plan, batch_size, prompt_length, cache.max_len)
    check_every = eos_check_every if constants.eos is not None else 0
    inputs = {"inputs_embeds": plan.inputs_embeds} if plan.inputs_embeds is not None else {"input_ids": plan.input_ids}
    inputs = model.prefill_forward_inputs(dict(inputs, **plan.prefill_inputs))

    tokens, logits_per_step, scores_per_step, unfinished_per_step = [], [], [], []
    for step in range(plan.steps):
        if not step:
            logits, scores, next_tokens, state = prefill(model, cache, inputs, state, constants, prompt_length, host)
        elif compiled.usable:
            logits, scores, next_tokens, state = compiled_step(model, cache, next_tokens, state, constants,
                                                               prompt_length + step)
        else:
            logits, scores, next_tokens, state = decode_step(model, cache, {"input_ids": next_tokens.unsqueeze(1)},
                                                             state, constants, prompt_length + step)
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

    steps_run = steps_stock_runs(unfinished_per_step, len(tokens))
    new_tokens = ops.stack(tokens[:steps_run], 1) if steps_run > 1 else tokens[0].reshape(batch_size, 1)
    if plan.input_ids.shape[-1]:
        if new_tokens.dtype != plan.input_ids.dtype:
            new_tokens = new_tokens.astype(plan.input_ids.dtype)
        sequences = ops.cat([plan.input_ids, new_tokens], -1)
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
    if not unfinished_per_step or steps_done == 1:  # the first step always runs
        return steps_done
    alive_after = ops.stack(unfinished_per_step).any(-1)
    return min(steps_done, int(alive_after.astype(mindspore.int32).sum()) + 1)
