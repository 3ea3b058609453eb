"""Each rule by which our greedy ``generate`` hands a call to stock's, one test per rule; and the controls.

A fallback test asserts that stock's generate served the call on our model (conftest's spy) and that the
result equals stock's on the same weights (sequences, and per-step logits bit for bit), or, where stock
cannot serve the call itself, that ours raises what stock raises. The controls show that the base call
(BASE) is served by the fast path, so each fallback comes from its one option. The models are stock Llama
and stock Llama behind the accelerated-model interface (test_generation.py).
"""
import os

import numpy as np
import pytest
import mindspore
from mindspore import Tensor

from mindnlp.transformers import AutoTokenizer
from mindnlp.transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
from mindnlp.transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from mindnlp.transformers.generation.streamers import BaseStreamer

import fixtures
from test_generation import ROOT, assert_same_output, ids, models  # noqa: F401 (models is a fixture)

# Stock generates 27, 30, 46, 46, 46, 46 after this prompt.
BASE = dict(input_ids=ids([[5, 9, 3, 9]]), attention_mask=ids([[1, 1, 1, 1]]), max_new_tokens=6, do_sample=False,
            eos_token_id=None, return_dict_in_generate=True, output_logits=True)


def generate_both(models, options):
    stock, ours = models
    kwargs = {**BASE, **options}
    mindspore.set_seed(3)  # for the sampling case; greedy ignores it
    got = ours.generate(**kwargs)
    mindspore.set_seed(3)
    return got, stock.generate(**kwargs)


def fast_path_serves(models, calls, **options):
    got, expected = generate_both(models, options)
    assert calls.of(models[1]) == 0, "stock's generate served the call"
    assert_same_output(got, expected)


def stock_serves(models, calls, **options):
    got, expected = generate_both(models, options)
    assert calls.of(models[1]) == 1, "the fast path served the call"
    assert_same_output(got, expected)
    return got, expected


def raises_like_stock(models, calls, **options):
    """For a call stock's generate cannot serve: ours hands it to stock, and raises what stock raises."""
    stock, ours = models
    kwargs = {**BASE, **options}
    with pytest.raises(Exception) as ours_error:
        ours.generate(**kwargs)
    assert calls.of(ours) == 1, "the fast path took the call"
    with pytest.raises(Exception) as stock_error:
        stock.generate(**kwargs)
    assert type(ours_error.value) is type(stock_error.value)
    assert str(ours_error.value) == str(stock_error.value)


@pytest.fixture(scope="module")
def tokenizer():
    path = fixtures.ensure("qwen2_moe", "tiny", os.path.join(ROOT, "eval_cache", "fixtures"))
    return AutoTokenizer.from_pretrained(path)  # ids 0-47 (the models' vocabulary) are single characters


# Controls: the fast path serves these.

def test_fast_path_serves_plain_greedy(models, stock_generate_calls):
    fast_path_serves(models, stock_generate_calls)


def test_fast_path_serves_repetition_penalty(models, stock_generate_calls):
    fast_path_serves(models, stock_generate_calls, repetition_penalty=1.3)


def test_fast_path_serves_inputs_embeds_with_mask(models, stock_generate_calls):
    embeds = models[0].get_input_embeddings()(ids([[0, 5, 9, 3]]))
    fast_path_serves(models, stock_generate_calls, input_ids=None, inputs_embeds=embeds,
                     attention_mask=ids([[0, 1, 1, 1]]), pad_token_id=0)


# Arguments of generate itself.

class _BanToken(LogitsProcessor):
    def __call__(self, input_ids, scores):
        mask = np.zeros(scores.shape, np.float32)
        mask[:, 27] = -1e9  # stock's first new token
        return scores + Tensor(mask)


def test_logits_processor_list(models, stock_generate_calls):
    got, _ = stock_serves(models, stock_generate_calls, logits_processor=LogitsProcessorList([_BanToken()]))
    assert 27 not in got.sequences.asnumpy()[0, 4:]


class _StopAfter(StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return Tensor(np.full(input_ids.shape[0], input_ids.shape[1] >= self.length))


def test_stopping_criteria(models, stock_generate_calls):
    got, _ = stock_serves(models, stock_generate_calls, stopping_criteria=StoppingCriteriaList([_StopAfter(6)]))
    assert got.sequences.shape == (1, 6)


def test_prefix_allowed_tokens_fn(models, stock_generate_calls):
    got, _ = stock_serves(models, stock_generate_calls, prefix_allowed_tokens_fn=lambda batch, prefix: [7, 11, 13])
    assert set(got.sequences.asnumpy()[0, 4:].tolist()) <= {7, 11, 13}


def test_synced_devices(models, stock_generate_calls):
    stock_serves(models, stock_generate_calls, synced_devices=True)


def test_assistant_model_is_refused_by_stock_loop(models, stock_generate_calls):
    """Assisted decoding crops the cache, which ours keeps static: stock's loop over ours refuses it."""
    stock, ours = models
    with pytest.raises(NotImplementedError, match="static KV cache"):
        ours.generate(**BASE, assistant_model=stock)
    assert stock_generate_calls.of(ours) == 1


class _Collect(BaseStreamer):
    def __init__(self):
        self.tokens = []

    def put(self, value):
        self.tokens.append(value.asnumpy().tolist())

    def end(self):
        self.tokens.append("end")


def test_streamer(models, stock_generate_calls):
    ours_streamer, stock_streamer = _Collect(), _Collect()
    stock, ours = models
    got = ours.generate(**BASE, streamer=ours_streamer)
    assert stock_generate_calls.of(ours) == 1
    expected = stock.generate(**BASE, streamer=stock_streamer)
    assert_same_output(got, expected)
    assert len(ours_streamer.tokens) == 1 + 6 + 1  # the prompt, each new token, the end
    assert ours_streamer.tokens == stock_streamer.tokens


@pytest.mark.parametrize("negative", ["ids", "attention_mask"])
def test_negative_prompt(models, stock_generate_calls, negative):
    # Without guidance_scale stock ignores the negative prompt; what matters here is who serves the call.
    stock_serves(models, stock_generate_calls, **{f"negative_prompt_{negative}": ids([[7, 8]])})


# The resolved generation config.

@pytest.mark.parametrize("options", [dict(num_beams=2), dict(do_sample=True, top_k=5)])
def test_generation_mode(models, stock_generate_calls, options):
    stock_serves(models, stock_generate_calls, **options)


def test_num_return_sequences(models, stock_generate_calls):
    got, _ = stock_serves(models, stock_generate_calls, num_beams=2, num_return_sequences=2)
    assert got.sequences.shape[0] == 2


def test_num_return_sequences_in_greedy_mode_raises_like_stock(models):
    """Stock's config validation refuses it in greedy mode, before any loop: ours raises the same error."""
    stock, ours = models
    with pytest.raises(ValueError, match="num_return_sequences") as ours_error:
        ours.generate(**BASE, num_return_sequences=2)
    with pytest.raises(ValueError) as stock_error:
        stock.generate(**BASE, num_return_sequences=2)
    assert str(ours_error.value) == str(stock_error.value)


def test_use_cache_false(models, stock_generate_calls):
    stock_serves(models, stock_generate_calls, use_cache=False)


def test_cache_implementation_static(models, stock_generate_calls):
    stock_serves(models, stock_generate_calls, cache_implementation="static")


def test_token_healing(models, stock_generate_calls, tokenizer):
    raises_like_stock(models, stock_generate_calls, token_healing=True, tokenizer=tokenizer)


@pytest.mark.parametrize("output", ["output_attentions", "output_hidden_states"])
def test_attentions_or_hidden_states(models, stock_generate_calls, output):
    # Sequences and logits only: our forward returns no attentions or hidden states (see the report).
    stock_serves(models, stock_generate_calls, **{output: True})


def test_max_time(models, stock_generate_calls):
    stock_serves(models, stock_generate_calls, max_time=100.0)


def test_stop_strings(models, stock_generate_calls, tokenizer):
    raises_like_stock(models, stock_generate_calls, stop_strings=["$"], tokenizer=tokenizer)


# Model kwargs and the processors stock builds from the config.

def test_unknown_model_kwarg(models, stock_generate_calls):
    raises_like_stock(models, stock_generate_calls, token_type_ids=ids([[0, 0, 0, 0]]))


def test_attention_mask_not_2d(models, stock_generate_calls):
    raises_like_stock(models, stock_generate_calls, attention_mask=ids([[[1, 1, 1, 1]]]))


def test_logits_processor_from_config(models, stock_generate_calls):
    got, _ = stock_serves(models, stock_generate_calls, no_repeat_ngram_size=2)
    assert got.sequences.asnumpy()[0, 4:].tolist() != [27, 30, 46, 46, 46, 46]
