"""Our Qwen2-MoE against stock on the generated tiny fixture: outputs, registration, loading, syncs."""
import os

import numpy as np
import pytest

import mindspore
from mindnlp.transformers import AutoModelForCausalLM, AutoTokenizer
from mindnlp.transformers.models.qwen2_moe import modeling_qwen2_moe as stock_module

import counters
import fixtures
import judge
from mindnlp.accel.models.qwen2_moe import Qwen2MoeForCausalLM as Ours

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREEDY = dict(do_sample=False, return_dict_in_generate=True, output_logits=True)


@pytest.fixture(scope="module")
def fixture_path():
    return fixtures.ensure("qwen2_moe", "tiny", os.path.join(ROOT, "eval_cache", "fixtures"))


@pytest.fixture(scope="module")
def stock(fixture_path):
    return stock_module.Qwen2MoeForCausalLM.from_pretrained(fixture_path).set_train(False)


@pytest.fixture(scope="module")
def ours(fixture_path):
    return AutoModelForCausalLM.from_pretrained(fixture_path).set_train(False)


def ids_of(*rows):
    return mindspore.Tensor(np.array(rows, dtype=np.int64))


def assert_same_generation(a, b):
    """Same tokens and bit-identical logits at every step."""
    assert a.sequences.asnumpy().tolist() == b.sequences.asnumpy().tolist()
    assert len(a.logits) == len(b.logits)
    for step, (x, y) in enumerate(zip(a.logits, b.logits)):
        np.testing.assert_array_equal(x.asnumpy(), y.asnumpy(), err_msg=f"step {step}")


@pytest.mark.smoke
def test_auto_class_resolves_to_ours(ours):
    assert isinstance(ours, Ours)


@pytest.mark.parametrize("length,new_tokens", [(1, 4), (7, 9), (23, 12)])
def test_greedy_equals_stock(stock, ours, length, new_tokens):
    prompt = ids_of(list(range(40, 40 + 3 * length, 3)))
    expected = stock.generate(input_ids=prompt, max_new_tokens=new_tokens, **GREEDY)
    got = ours.generate(input_ids=prompt, max_new_tokens=new_tokens, **GREEDY)
    assert_same_generation(expected, got)


@pytest.mark.smoke
def test_judge_prompts_equal_stock(stock, ours, fixture_path):
    tokenizer = AutoTokenizer.from_pretrained(fixture_path)
    for _, case in judge.prompt_cases("qwen2_moe", None):
        inputs = judge.prepare_inputs("qwen2_moe", stock, tokenizer, case)
        expected = stock.generate(**inputs, max_new_tokens=10, **GREEDY)
        got = ours.generate(**inputs, max_new_tokens=10, **GREEDY)
        assert_same_generation(expected, got)


def test_left_padded_batch_equals_stock(stock, ours):
    prompt = ids_of([0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26])
    mask = ids_of([0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1])
    expected = stock.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, pad_token_id=0, **GREEDY)
    got = ours.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, pad_token_id=0, **GREEDY)
    assert_same_generation(expected, got)


def test_unsupported_option_falls_back_to_stock_result(stock, ours):
    prompt = ids_of([5, 6, 7, 8])
    kwargs = dict(input_ids=prompt, max_new_tokens=4, num_beams=2, do_sample=False)
    assert stock.generate(**kwargs).asnumpy().tolist() == ours.generate(**kwargs).asnumpy().tolist()


def test_unsupported_config_builds_stock(fixture_path):
    model = AutoModelForCausalLM.from_pretrained(fixture_path, output_router_logits=True)
    assert type(model) is stock_module.Qwen2MoeForCausalLM


def test_decode_makes_no_host_sync_and_fewer_launches(stock, ours):
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=6, eos_token_id=None, **GREEDY)
    ours_counts = counters.count_generate(ours, kwargs)
    stock_counts = counters.count_generate(stock, kwargs)
    assert ours_counts.decode_syncs == 0
    assert stock_counts.decode_syncs > 0
    assert ours_counts.decode_ops < stock_counts.decode_ops


def test_save_and_reload_gives_identical_logits(ours, stock, tmp_path):
    ours.save_pretrained(tmp_path)
    prompt = ids_of([9, 8, 7, 6, 5])
    reloaded = Ours.from_pretrained(tmp_path).set_train(False)
    as_stock = stock_module.Qwen2MoeForCausalLM.from_pretrained(tmp_path).set_train(False)
    want = ours(input_ids=prompt).logits.asnumpy()
    assert np.array_equal(reloaded(input_ids=prompt).logits.asnumpy(), want)
    np.testing.assert_allclose(as_stock(prompt).logits.asnumpy(), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(stock(prompt).logits.asnumpy(), want, rtol=1e-5, atol=1e-4)


def test_cache_longer_than_the_rope_table_is_refused(ours):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours.allocate_cache(1, ours.config.max_position_embeddings + 1)


def test_cache_is_rounded_up_and_reused(ours):
    first = ours.allocate_cache(1, 30)
    assert first.max_len >= 30 and first.max_len % 256 == 0
    assert ours.allocate_cache(1, first.max_len) is first
    assert ours.allocate_cache(2, 30) is not first


def test_half_precision_follows_stock_dtype_policy(fixture_path):
    """fp32 hides every cast; in fp16 (the CPU's stand-in for bf16) each of stock's casts and
    roundings shows, so ours must give stock's tokens and logits bit for bit."""
    stock16 = stock_module.Qwen2MoeForCausalLM.from_pretrained(fixture_path, ms_dtype=mindspore.float16)
    ours16 = AutoModelForCausalLM.from_pretrained(fixture_path, ms_dtype=mindspore.float16)
    assert isinstance(ours16, Ours) and ours16.lm_head.weight.dtype == mindspore.float16
    tokenizer = AutoTokenizer.from_pretrained(fixture_path)
    for _, case in judge.prompt_cases("qwen2_moe", None):
        inputs = judge.prepare_inputs("qwen2_moe", stock16, tokenizer, case)
        expected = stock16.set_train(False).generate(**inputs, max_new_tokens=8, **GREEDY)
        got = ours16.set_train(False).generate(**inputs, max_new_tokens=8, **GREEDY)
        assert_same_generation(expected, got)


def test_loading_options_our_layouts_cannot_take_build_stock(fixture_path):
    model = AutoModelForCausalLM.from_pretrained(fixture_path, low_cpu_mem_usage=True)
    assert type(model) is stock_module.Qwen2MoeForCausalLM
