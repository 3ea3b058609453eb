"""The greedy loop against stock generate on the same weights: sequences, logits, EOS trimming, fallbacks, syncs.

Whether the fast path served a call is read from outside: stock's generate ran for it or not (the
``stock_generate_calls`` spy of conftest). Most tests run stock Llama behind the accelerated-model interface;
the last ones run our Qwen2-MoE on the tiny fixture against stock's class on the same checkpoint.
"""
import contextlib
import os

import numpy as np
import pytest
import mindspore
from mindspore import Tensor

from mindnlp.transformers import AutoModelForCausalLM, LlamaConfig
from mindnlp.transformers.cache_utils import DynamicCache
from mindnlp.transformers.generation.logits_process import (
    LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor)
from mindnlp.transformers.models.llama.modeling_llama import LlamaForCausalLM  # stock's, not ours
from mindnlp.transformers.models.qwen2_moe import modeling_qwen2_moe as stock_qwen2_moe

import fixtures
from mindnlp.accel.generation import GreedyGenerationMixin
from greedy_checks import moe_prefill_bound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 48


class SyncCounter:
    """Counts host reads of device tensors made outside the model's forward."""

    METHODS = ("asnumpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__len__")

    def __init__(self):
        self.count = 0
        self._depth = 0
        self._paused = 0

    @contextlib.contextmanager
    def paused(self):
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def install(self, monkeypatch):
        for name in self.METHODS:
            if hasattr(Tensor, name):
                monkeypatch.setattr(Tensor, name, self._wrap(getattr(Tensor, name)))

    def _wrap(self, method):
        counter = self

        def counted(tensor, *args, **kwargs):
            # Only the outermost read counts: __bool__ may itself call asnumpy.
            if counter._depth == 0 and counter._paused == 0:
                counter.count += 1
            counter._depth += 1
            try:
                return method(tensor, *args, **kwargs)
            finally:
                counter._depth -= 1

        return counted


SYNCS = SyncCounter()


class _HostLengthCache:
    """A stock DynamicCache and the number of positions written, kept on the host so no forward needs a sync."""

    def __init__(self, num_layers, max_len):
        self.dynamic = DynamicCache(num_layers)
        self.length = 0
        self.max_len = max_len

    def reorder_cache(self, beam_idx):
        self.dynamic.reorder_cache(beam_idx)


class InterfaceLlama(GreedyGenerationMixin, LlamaForCausalLM):
    """Stock Llama speaking the accelerated-model interface, so its numerics are exactly stock's."""

    forward_calls = 0

    def allocate_cache(self, batch_size, max_len):
        return _HostLengthCache(self.config.num_hidden_layers, max_len)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None,
                cache_position=None, logits_to_keep=0, return_dict=None, kv_len=None, **unused):
        """``unused`` (e.g. ``output_attentions`` from stock's loops) is ignored here, so that which loop serves a
        call can be tested on stock's numerics; our real models refuse it with a clear error (test_qwen2_moe)."""
        InterfaceLlama.forward_calls += 1
        new = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if kv_len is not None and kv_len - new < cache.length:
            # A static cache overwrites positions: stock's loop with use_cache=False reruns the whole sequence.
            cache.dynamic.crop(kv_len - new)
            cache.length = kv_len - new
        end = cache.length + new
        if attention_mask is not None:  # None: no padding
            assert attention_mask.ndim == 2 and attention_mask.shape[1] >= end
            attention_mask = attention_mask[:, :end]
        with SYNCS.paused():
            outputs = LlamaForCausalLM.forward(
                self, input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=position_ids, past_key_values=cache.dynamic, cache_position=cache_position,
                num_logits_to_keep=logits_to_keep, use_cache=True, return_dict=True,
            )
        cache.length = end
        return outputs


@pytest.fixture(scope="module")
def models():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2)
    mindspore.set_seed(7)
    stock = LlamaForCausalLM(config)
    ours = InterfaceLlama(config)
    ours.load_state_dict(stock.state_dict())
    stock.set_train(False)
    ours.set_train(False)
    return stock, ours


@pytest.fixture
def stock_served(models, stock_generate_calls):
    """How many of this test's calls of ``ours.generate`` stock's generate served (0: the fast path served all)."""
    _, ours = models
    return lambda: stock_generate_calls.of(ours)


def ids(rows):
    return Tensor(np.array(rows, dtype=np.int64))


def assert_same_output(ours, stock, bound=None):
    """Same sequences; logits and scores bit for bit, or within `bound` of each step's largest |value|."""
    np.testing.assert_array_equal(ours.sequences.asnumpy(), stock.sequences.asnumpy())
    for field in ("logits", "scores"):
        mine, theirs = getattr(ours, field), getattr(stock, field)
        assert (mine is None) == (theirs is None), field
        if theirs is not None:
            assert len(mine) == len(theirs), field
            for step, (a, b) in enumerate(zip(mine, theirs)):
                assert a.shape == b.shape and a.dtype == b.dtype, (field, step)
                a, b = a.asnumpy(), b.asnumpy()
                if bound is None:
                    np.testing.assert_array_equal(a, b, err_msg=f"{field} step {step}")
                else:
                    np.testing.assert_allclose(a, b, rtol=0, atol=bound * np.abs(b).max(), err_msg=f"{field} step {step}")


def both(models, **kwargs):
    stock, ours = models
    defaults = dict(do_sample=False, use_cache=True, return_dict_in_generate=True, output_logits=True)
    defaults.update(kwargs)
    return ours.generate(**defaults), stock.generate(**defaults)


@pytest.mark.parametrize("prompt,new_tokens", [([5], 1), ([5, 9, 3, 7], 6), ([11, 4, 30, 8, 19, 22, 6], 13)])
def test_greedy_equals_stock(models, stock_served, prompt, new_tokens):
    ours, stock = both(models, input_ids=ids([prompt]), attention_mask=ids([[1] * len(prompt)]),
                       max_new_tokens=new_tokens, output_scores=True, eos_token_id=None)
    assert stock_served() == 0
    assert len(stock.logits) == new_tokens
    assert_same_output(ours, stock)


def test_batch_with_left_padding(models, stock_served):
    prompt = ids([[0, 0, 5, 9, 3], [12, 4, 30, 8, 19]])
    mask = ids([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ours, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=8, pad_token_id=0,
                       eos_token_id=None)
    assert stock_served() == 0
    assert_same_output(ours, stock)


def _first_tokens(models, prompt, mask, count):
    """The tokens stock generates for each row with no EOS."""
    _, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=count, eos_token_id=None,
                    pad_token_id=0)
    return stock.sequences.asnumpy()[:, prompt.shape[1]:]


@pytest.mark.parametrize("check_every", [0, 1, 3])
def test_eos_midway_in_one_row_pads_it(models, stock_served, monkeypatch, check_every):
    monkeypatch.setattr(InterfaceLlama, "greedy_eos_check_every", check_every)
    prompt, mask = ids([[0, 5, 9, 3], [12, 4, 30, 8]]), ids([[0, 1, 1, 1], [1, 1, 1, 1]])
    generated = _first_tokens(models, prompt, mask, 10)
    eos = int(generated[0, 2])
    ours, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=10, eos_token_id=eos,
                       pad_token_id=0, output_scores=True)
    assert stock_served() == 0
    assert stock.sequences.shape == (2, 14)
    assert (stock.sequences.asnumpy()[0, 7:] == 0).all()
    assert_same_output(ours, stock)


@pytest.mark.parametrize("check_every", [0, 4])
def test_eos_everywhere_stops_early_like_stock(models, stock_served, monkeypatch, check_every):
    monkeypatch.setattr(InterfaceLlama, "greedy_eos_check_every", check_every)
    prompt, mask = ids([[7, 5, 9, 3]]), ids([[1, 1, 1, 1]])
    generated = _first_tokens(models, prompt, mask, 12)
    eos = [int(generated[0, 1]), VOCAB - 1]
    ours, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=12, eos_token_id=eos,
                       pad_token_id=0)
    assert stock_served() == 0
    assert stock.sequences.shape[1] < prompt.shape[1] + 12
    assert_same_output(ours, stock)


def test_inputs_embeds_like_janus(models, stock_served):
    stock, ours = models
    prompt, mask = ids([[0, 5, 9, 3], [12, 4, 30, 8]]), ids([[0, 1, 1, 1], [1, 1, 1, 1]])
    embeds = stock.get_input_embeddings()(prompt)
    ours_out, stock_out = both(models, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=7,
                               pad_token_id=0, eos_token_id=None)
    assert stock_served() == 0
    assert stock_out.sequences.shape == (2, 7)
    assert_same_output(ours_out, stock_out)


def test_repetition_penalty_stays_on_fast_path(models, stock_served):
    ours, stock = both(models, input_ids=ids([[5, 9, 3, 9, 5]]), attention_mask=ids([[1] * 5]),
                       max_new_tokens=10, repetition_penalty=1.3, output_scores=True, eos_token_id=None)
    assert stock_served() == 0
    assert_same_output(ours, stock)


def test_plain_tensor_return(models, stock_served):
    stock, ours = models
    kwargs = dict(input_ids=ids([[5, 9, 3]]), attention_mask=ids([[1, 1, 1]]), max_new_tokens=4, do_sample=False)
    mine = ours.generate(**kwargs)
    assert stock_served() == 0
    np.testing.assert_array_equal(mine.asnumpy(), stock.generate(**kwargs).asnumpy())


class _BanToken(LogitsProcessor):
    def __call__(self, input_ids, scores):
        mask = np.zeros(scores.shape, np.float32)
        mask[:, 3] = -1e9
        return scores + Tensor(mask)


@pytest.mark.parametrize("options", [
    dict(min_new_tokens=4, eos_token_id=2),
    dict(no_repeat_ngram_size=2),
    dict(num_beams=2),
    dict(logits_processor=LogitsProcessorList([_BanToken()])),
    dict(output_scores=True, max_time=100.0),
])
def test_other_options_fall_back_to_stock(models, stock_served, options):
    ours, stock = both(models, input_ids=ids([[5, 9, 3, 9]]), attention_mask=ids([[1] * 4]), max_new_tokens=6,
                       **options)
    assert stock_served() == 1
    assert_same_output(ours, stock)


def test_sampling_falls_back_to_stock(models, stock_served):
    stock, ours = models
    kwargs = dict(input_ids=ids([[5, 9, 3]]), attention_mask=ids([[1, 1, 1]]), max_new_tokens=6, do_sample=True,
                  top_k=5)
    mindspore.set_seed(3)
    mine = ours.generate(**kwargs)
    mindspore.set_seed(3)
    theirs = stock.generate(**kwargs)
    assert stock_served() == 1
    np.testing.assert_array_equal(mine.asnumpy(), theirs.asnumpy())


def test_contrastive_search_is_refused_clearly(models):
    _, ours = models
    with pytest.raises(NotImplementedError, match="static KV cache"):
        ours.generate(input_ids=ids([[5, 9, 3]]), max_new_tokens=3, penalty_alpha=0.6, top_k=4)


def _count_syncs(models, monkeypatch, steps, check_every):
    _, ours = models
    monkeypatch.setattr(InterfaceLlama, "greedy_eos_check_every", check_every)
    SYNCS.install(monkeypatch)
    SYNCS.count = 0
    InterfaceLlama.forward_calls = 0
    # An EOS id the model never produces here, so every step runs.
    ours.generate(input_ids=ids([[5, 9, 3]]), attention_mask=ids([[1, 1, 1]]), max_new_tokens=steps,
                  do_sample=False, eos_token_id=VOCAB + 5, pad_token_id=0, return_dict_in_generate=True,
                  output_logits=True)
    assert InterfaceLlama.forward_calls == steps
    return SYNCS.count


def test_syncs_do_not_grow_with_steps(models, monkeypatch):
    assert _count_syncs(models, monkeypatch, 3, 0) == _count_syncs(models, monkeypatch, 14, 0)


def test_syncs_bounded_by_periodic_eos_checks(models, monkeypatch):
    base = _count_syncs(models, monkeypatch, 3, 0)
    # the prompt's ids and mask (made on the host by the tokenizer), and the final trim
    assert base == 3
    steps, every = 14, 4
    assert _count_syncs(models, monkeypatch, steps, every) == base + (steps - 1) // every


# Our Qwen2-MoE (tiny fixture) against stock's Qwen2MoeForCausalLM on the same checkpoint.

@pytest.fixture(scope="module")
def qwen2_moe():
    path = fixtures.ensure("qwen2_moe", "tiny", os.path.join(ROOT, "eval_cache", "fixtures"))
    stock = stock_qwen2_moe.Qwen2MoeForCausalLM.from_pretrained(path).set_train(False)
    ours = AutoModelForCausalLM.from_pretrained(path).set_train(False)
    assert isinstance(ours, GreedyGenerationMixin) and not isinstance(stock, GreedyGenerationMixin)
    return stock, ours


class _PenalisePromptOnly(LogitsProcessor):
    """Stock's repetition penalty over the prompt's ids only: what a loop that never penalised generated ids gives."""

    def __init__(self, penalty, prompt_length):
        self.penalty = RepetitionPenaltyLogitsProcessor(penalty)
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        return self.penalty(input_ids[:, :self.prompt_length], scores)


def test_qwen2_moe_repetition_penalty_covers_generated_ids(qwen2_moe, stock_generate_calls):
    stock, ours = qwen2_moe
    prompt = [3, 4, 5, 6, 7]
    kwargs = dict(input_ids=ids([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                  return_dict_in_generate=True, output_logits=True, output_scores=True)
    expected = stock.generate(repetition_penalty=1.2, **kwargs)
    prompt_only = stock.generate(repetition_penalty=1.0,
                                 logits_processor=LogitsProcessorList([_PenalisePromptOnly(1.2, len(prompt))]),
                                 **kwargs)
    # Penalising the prompt's ids only, the continuation repeats a generated id, and stock's differs:
    # a fast path that never penalised generated ids fails this test.
    new = prompt_only.sequences.asnumpy()[0, len(prompt):].tolist()
    assert any(new.count(token) > 1 and token not in prompt for token in new)
    assert expected.sequences.asnumpy().tolist() != prompt_only.sequences.asnumpy().tolist()

    got = ours.generate(repetition_penalty=1.2, **kwargs)
    assert stock_generate_calls.of(ours) == 0
    assert_same_output(got, expected, moe_prefill_bound())


def test_qwen2_moe_left_padded_batch_with_eos_midway(qwen2_moe, stock_generate_calls):
    """Row 0 (left-padded) ends at its 3rd new token and gets pad tokens while row 1 runs on; row 1 ends at
    its 6th, so stock stops after 6 of 10 steps, which the fast path learns at its next EOS check and trims to.
    The fixture's generation config adds its repetition penalty (1.05), as in the judge's call."""
    stock, ours = qwen2_moe
    prompt = ids([[0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26]])
    mask = ids([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    kwargs = dict(input_ids=prompt, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    free = stock.generate(eos_token_id=None, **kwargs).sequences.asnumpy()[:, 6:]
    eos = [int(free[0, 2]), int(free[1, 5])]
    expected = stock.generate(eos_token_id=eos, **kwargs)
    sequences = expected.sequences.asnumpy()
    assert sequences.shape == (2, 6 + 6)
    assert sequences[0, 6 + 2] == eos[0] and (sequences[0, 6 + 3:] == 0).all()
    assert sequences[1, -1] == eos[1]

    got = ours.generate(eos_token_id=eos, **kwargs)
    assert stock_generate_calls.of(ours) == 0
    assert_same_output(got, expected, moe_prefill_bound())
