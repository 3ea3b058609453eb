"""Which ``generate`` calls the greedy fast path serves, resolved by stock's own helpers into a plan."""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import mindspore

from mindnlp.transformers.generation.configuration_utils import GenerationMode
from mindnlp.transformers.generation.utils import logger as stock_logger
from mindnlp.transformers.generation.logits_process import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

# Model kwargs the fast path understands; anything else sends the call to stock.
_KNOWN_MODEL_KWARGS = frozenset({"attention_mask", "inputs_embeds", "input_ids"})


@dataclass
class GreedyPlan:
    """Everything the fast loop needs, resolved from the ``generate`` call as stock resolves it."""

    config: object  # the resolved GenerationConfig (special-token tensors prepared)
    input_ids: mindspore.Tensor  # [B, n] (n = 0 for a call with inputs_embeds only)
    inputs_embeds: Optional[mindspore.Tensor]
    attention_mask: mindspore.Tensor  # [B, S]
    prefill_inputs: dict  # the model's greedy_prefill_inputs given in the call
    steps: int  # new tokens at most
    penalty: Optional[float]  # repetition penalty, or None


def is_set(option):
    """Whether a stock ``generate`` argument asks for something (empty lists and False ask for nothing)."""
    if option is None or option is False:
        return False
    return not (isinstance(option, list) and not option)


def greedy_plan(model, inputs, generation_config, kwargs):
    """Resolve the call as stock would; return (plan, None) for the fast path or (None, reason)."""
    kwargs.pop("tokenizer", None)  # only stop strings use it, and those fall back
    config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    reason = unsupported_generation(model, config)
    if reason:
        return None, reason
    has_mask = model_kwargs.get("attention_mask") is not None
    inputs_tensor, input_name, model_kwargs = model._prepare_model_inputs(inputs, config.bos_token_id, model_kwargs)
    given = {name for name, value in model_kwargs.items() if value is not None}
    unknown = given - _KNOWN_MODEL_KWARGS - set(model.greedy_prefill_inputs)
    if unknown:
        return None, f"model kwargs {sorted(unknown)}"
    if has_mask and model_kwargs["attention_mask"].ndim != 2:
        return None, "attention_mask is not 2D"

    prepare_special_tokens(model, config, has_mask)
    if input_name == "input_ids":
        input_ids, inputs_embeds = inputs_tensor, None
    else:
        input_ids, inputs_embeds = model_kwargs.pop("input_ids"), inputs_tensor
    if has_mask:
        attention_mask = model_kwargs["attention_mask"]
    else:
        attention_mask = model._prepare_attention_mask_for_generation(
            inputs_tensor, config._pad_token_tensor, config._eos_token_tensor)

    ids_length = input_ids.shape[-1]
    has_default_max_length = kwargs.get("max_length") is None and config.max_length is not None
    config = model._prepare_generated_length(
        generation_config=config,
        has_default_max_length=has_default_max_length,
        has_default_min_length=kwargs.get("min_length") is None and config.min_length is not None,
        model_input_name=input_name,
        input_ids_length=ids_length,
        inputs_tensor=inputs_tensor,
    )
    model._validate_generated_length(config, ids_length, has_default_max_length)

    penalty = None
    processors = model._get_logits_processor(
        generation_config=config, input_ids_seq_length=ids_length, encoder_input_ids=inputs_tensor,
        prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(), model_kwargs={"use_cache": True})
    for processor in processors:
        if type(processor) is not RepetitionPenaltyLogitsProcessor:
            return None, f"logits processor {type(processor).__name__}"
        penalty = processor.penalty

    prefill_inputs = {name: model_kwargs[name] for name in model.greedy_prefill_inputs if name in given}
    return GreedyPlan(config=config, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      prefill_inputs=prefill_inputs, steps=config.max_length - ids_length, penalty=penalty), None


def prepare_special_tokens(model, config, has_mask: bool) -> None:
    """Stock's _prepare_special_tokens for ids given as Python ints (as generation configs hold them),
    with its checks and warnings made on those ints: stock makes them on device tensors, two host reads
    and eight launches per call. Ids given as tensors go to stock's own method."""
    ids = (config.bos_token_id, config.eos_token_id, config.pad_token_id, config.decoder_start_token_id)
    if model.config.is_encoder_decoder or any(isinstance(value, mindspore.Tensor) for value in ids):
        model._prepare_special_tokens(config, has_mask)
        return
    bos, eos, pad, start = ids
    eos_ids = None if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])
    if pad is None and eos_ids is not None:
        if not has_mask:
            stock_logger.warning("The attention mask and the pad token id were not set. As a consequence, you may "
                                 "observe unexpected behavior. Please pass your input's `attention_mask` to obtain "
                                 "reliable results.")
        pad = eos_ids[0]
        stock_logger.warning(f"Setting `pad_token_id` to `eos_token_id`:{pad} for open-end generation.")
    if eos_ids is not None and pad in eos_ids and not has_mask:
        stock_logger.warning_once("The attention mask is not set and cannot be inferred from input because pad token "
                                  "is same as eos token. As a consequence, you may observe unexpected behavior. "
                                  "Please pass your input's `attention_mask` to obtain reliable results.")
    if eos_ids is not None and any(isinstance(value, float) or value < 0 for value in eos_ids):
        stock_logger.warning(f"`eos_token_id` should consist of positive integers, but is {eos_ids}. Your generation "
                             "will not stop until the maximum length is reached. Depending on other flags, it may even "
                             "crash.")
    config._bos_token_tensor = _ids_tensor(bos)
    config._eos_token_tensor = _ids_tensor(eos_ids)
    config._pad_token_tensor = _ids_tensor(pad)
    config._decoder_start_token_tensor = _ids_tensor(start)


def _ids_tensor(value):
    """int64 ids as a tensor made on the host, as stock's mindspore.tensor(token, dtype=int64) makes them."""
    return None if value is None else mindspore.Tensor(np.array(value, np.int64))


def unsupported_generation(model, config):
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
        (model.config.is_encoder_decoder, "encoder-decoder model"),
    )
    return next((reason for failed, reason in checks if failed), None)
