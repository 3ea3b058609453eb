"""The greedy loop against stock generate on the same weights: sequences, logits, EOS trimming, fallbacks, syncs."""
import contextlib

import numpy as np
import pytest
import mindspore
from mindspore import Tensor

from mindnlp.transformers import LlamaConfig, LlamaForCausalLM
from mindnlp.transformers.cache_utils import DynamicCache
from mindnlp.transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

from mindnlp.accel.generation import GreedyGenerationMixin

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
                cache_position=None, logits_to_keep=0, return_dict=None, kv_len=None):
        InterfaceLlama.forward_calls += 1
        new = (input_ids if input_ids is not None else inputs_embeds).shape[1]
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
def fast_path_calls(monkeypatch):
    calls = []
    original = GreedyGenerationMixin._greedy_decode

    def spy(self, plan):
        calls.append(plan)
        return original(self, plan)

    monkeypatch.setattr(GreedyGenerationMixin, "_greedy_decode", spy)
    return calls


def ids(rows):
    return Tensor(np.array(rows, dtype=np.int64))


def assert_same_output(ours, stock):
    np.testing.assert_array_equal(ours.sequences.asnumpy(), stock.sequences.asnumpy())
    for field in ("logits", "scores"):
        mine, theirs = getattr(ours, field), getattr(stock, field)
        assert (mine is None) == (theirs is None), field
        if theirs is not None:
            assert len(mine) == len(theirs), field
            for step, (a, b) in enumerate(zip(mine, theirs)):
                assert a.shape == b.shape and a.dtype == b.dtype, (field, step)
                np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=f"{field} step {step}")


def both(models, **kwargs):
    stock, ours = models
    defaults = dict(do_sample=False, use_cache=True, return_dict_in_generate=True, output_logits=True)
    defaults.update(kwargs)
    return ours.generate(**defaults), stock.generate(**defaults)


@pytest.mark.parametrize("prompt,new_tokens", [([5], 1), ([5, 9, 3, 7], 6), ([11, 4, 30, 8, 19, 22, 6], 13)])
def test_greedy_equals_stock(models, fast_path_calls, prompt, new_tokens):
    ours, stock = both(models, input_ids=ids([prompt]), attention_mask=ids([[1] * len(prompt)]),
                       max_new_tokens=new_tokens, output_scores=True, eos_token_id=None)
    assert fast_path_calls
    assert len(stock.logits) == new_tokens
    assert_same_output(ours, stock)


def test_batch_with_left_padding(models, fast_path_calls):
    prompt = ids([[0, 0, 5, 9, 3], [12, 4, 30, 8, 19]])
    mask = ids([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ours, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=8, pad_token_id=0,
                       eos_token_id=None)
    assert fast_path_calls
    assert_same_output(ours, stock)


def _first_tokens(models, prompt, mask, count):
    """The tokens stock generates for each row with no EOS."""
    _, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=count, eos_token_id=None,
                    pad_token_id=0)
    return stock.sequences.asnumpy()[:, prompt.shape[1]:]


@pytest.mark.parametrize("check_every", [0, 1, 3])
def test_eos_midway_in_one_row_pads_it(models, fast_path_calls, monkeypatch, check_every):
    monkeypatch.setattr(InterfaceLlama, "greedy_eos_check_every", check_every)
    prompt, mask = ids([[0, 5, 9, 3], [12, 4, 30, 8]]), ids([[0, 1, 1, 1], [1, 1, 1, 1]])
    generated = _first_tokens(models, prompt, mask, 10)
    eos = int(generated[0, 2])
    ours, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=10, eos_token_id=eos,
                       pad_token_id=0, output_scores=True)
    assert fast_path_calls
    assert stock.sequences.shape == (2, 14)
    assert (stock.sequences.asnumpy()[0, 7:] == 0).all()
    assert_same_output(ours, stock)


@pytest.mark.parametrize("check_every", [0, 4])
def test_eos_everywhere_stops_early_like_stock(models, fast_path_calls, monkeypatch, check_every):
    monkeypatch.setattr(InterfaceLlama, "greedy_eos_check_every", check_every)
    prompt, mask = ids([[7, 5, 9, 3]]), ids([[1, 1, 1, 1]])
    generated = _first_tokens(models, prompt, mask, 12)
    eos = [int(generated[0, 1]), VOCAB - 1]
    ours, stock = both(models, input_ids=prompt, attention_mask=mask, max_new_tokens=12, eos_token_id=eos,
                       pad_token_id=0)
    assert fast_path_calls
    assert stock.sequences.shape[1] < prompt.shape[1] + 12
    assert_same_output(ours, stock)


def test_inputs_embeds_like_janus(models, fast_path_calls):
    stock, ours = models
    prompt, mask = ids([[0, 5, 9, 3], [12, 4, 30, 8]]), ids([[0, 1, 1, 1], [1, 1, 1, 1]])
    embeds = stock.get_input_embeddings()(prompt)
    ours_out, stock_out = both(models, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=7,
                               pad_token_id=0, eos_token_id=None)
    assert fast_path_calls
    assert stock_out.sequences.shape == (2, 7)
    assert_same_output(ours_out, stock_out)


def test_repetition_penalty_stays_on_fast_path(models, fast_path_calls):
    ours, stock = both(models, input_ids=ids([[5, 9, 3, 9, 5]]), attention_mask=ids([[1] * 5]),
                       max_new_tokens=10, repetition_penalty=1.3, output_scores=True, eos_token_id=None)
    assert fast_path_calls
    assert_same_output(ours, stock)


def test_plain_tensor_return(models, fast_path_calls):
    stock, ours = models
    kwargs = dict(input_ids=ids([[5, 9, 3]]), attention_mask=ids([[1, 1, 1]]), max_new_tokens=4, do_sample=False)
    mine = ours.generate(**kwargs)
    assert fast_path_calls
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
def test_other_options_fall_back_to_stock(models, fast_path_calls, options):
    ours, stock = both(models, input_ids=ids([[5, 9, 3, 9]]), attention_mask=ids([[1] * 4]), max_new_tokens=6,
                       **options)
    assert not fast_path_calls
    assert_same_output(ours, stock)


def test_sampling_falls_back_to_stock(models, fast_path_calls):
    stock, ours = models
    kwargs = dict(input_ids=ids([[5, 9, 3]]), attention_mask=ids([[1, 1, 1]]), max_new_tokens=6, do_sample=True,
                  top_k=5)
    mindspore.set_seed(3)
    mine = ours.generate(**kwargs)
    mindspore.set_seed(3)
    theirs = stock.generate(**kwargs)
    assert not fast_path_calls
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
    assert 1 <= base <= 6
    steps, every = 14, 4
    assert _count_syncs(models, monkeypatch, steps, every) == base + (steps - 1) // every
