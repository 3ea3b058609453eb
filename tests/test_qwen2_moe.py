"""Our Qwen2-MoE against stock on the generated fixtures: outputs, registration, loading, launches, syncs.

Two fixtures: "tiny" (every layer sparse, MHA) and "mixed" (GQA, a dense layer among sparse ones via
mlp_only_layers, top-3 of 6 experts renormalised), so a model that ignored the KV head count or the
dense layers would fail here. Every equality test also asserts that our class served the call on
the fast path (stock's generate never ran for it).

Equality is bit for bit, except after a prefill through the MoE on a CPU whose matmul rounds a row
by the call's row count (greedy_checks.matmul_rows_depend_on_count): then tokens must be equal and
logits within greedy_checks.MOE_PREFILL_BOUND of the step's largest |logit|.
"""
import os

import numpy as np
import pytest

import mindspore
from mindnlp.transformers import AutoModelForCausalLM, AutoTokenizer
from mindnlp.transformers.models.qwen2_moe import modeling_qwen2_moe as stock_module

import counters
import greedy_checks
import judge
from greedy_checks import GREEDY, ids_of, launches_per_layer, moe_prefill_bound
from mindnlp.accel.layers.moe import SparseMoe
from mindnlp.accel.models.qwen2_moe import Qwen2MoeForCausalLM as Ours, is_sparse_layer


def assert_same_generation(a, b, dtype=mindspore.float32):
    greedy_checks.assert_same_generation(a, b, moe_prefill_bound(dtype))


fixture_path, stock, ours = greedy_checks.model_fixtures("qwen2_moe", stock_module.Qwen2MoeForCausalLM)


def fast_generate(model, calls, **kwargs):
    return greedy_checks.fast_generate(model, Ours, calls, **kwargs)


@pytest.mark.smoke
def test_auto_class_resolves_to_ours(ours):
    assert isinstance(ours, Ours)


@pytest.mark.parametrize("length,new_tokens", [(1, 4), (7, 9), (23, 12)])
def test_greedy_equals_stock(stock, ours, stock_generate_calls, length, new_tokens):
    prompt = ids_of(list(range(40, 40 + 3 * length, 3)))
    expected = stock.generate(input_ids=prompt, max_new_tokens=new_tokens, **GREEDY)
    got = fast_generate(ours, stock_generate_calls, input_ids=prompt, max_new_tokens=new_tokens, **GREEDY)
    assert_same_generation(expected, got)


@pytest.mark.smoke
def test_judge_prompts_equal_stock(stock, ours, stock_generate_calls, fixture_path):
    tokenizer = AutoTokenizer.from_pretrained(fixture_path)
    for _, case in judge.prompt_cases("qwen2_moe", None):
        inputs = judge.prepare_inputs("qwen2_moe", stock, tokenizer, case)
        expected = stock.generate(**inputs, max_new_tokens=10, **GREEDY)
        got = fast_generate(ours, stock_generate_calls, **inputs, max_new_tokens=10, **GREEDY)
        assert_same_generation(expected, got)


def test_left_padded_batch_equals_stock(stock, ours, stock_generate_calls):
    prompt = ids_of([0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26])
    mask = ids_of([0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1])
    expected = stock.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, pad_token_id=0, **GREEDY)
    got = fast_generate(ours, stock_generate_calls, input_ids=prompt, attention_mask=mask, max_new_tokens=6,
                        pad_token_id=0, **GREEDY)
    assert_same_generation(expected, got)


def test_unsupported_option_falls_back_to_stock_result(stock, ours, stock_generate_calls):
    prompt = ids_of([5, 6, 7, 8])
    kwargs = dict(input_ids=prompt, max_new_tokens=4, num_beams=2, do_sample=False)
    expected = stock.generate(**kwargs).asnumpy().tolist()
    before = len(stock_generate_calls)
    assert ours.generate(**kwargs).asnumpy().tolist() == expected
    assert len(stock_generate_calls) == before + 1


@pytest.mark.parametrize("options", [dict(output_attentions=True), dict(output_hidden_states=True),
                                     dict(guidance_scale=1.5)])
def test_outputs_we_do_not_compute_are_a_clear_error(ours, options):
    """Stock's loops would otherwise return None attentions (or crash inside the guidance processor,
    which drives the model with stock's cache API): say what is unsupported and how to get it."""
    with pytest.raises(ValueError, match="does not support .*stock class"):
        ours.generate(input_ids=ids_of([5, 6, 7, 8]), max_new_tokens=3, do_sample=False,
                      return_dict_in_generate=True, **options)


def test_unsupported_config_builds_stock(fixture_path):
    model = AutoModelForCausalLM.from_pretrained(fixture_path, output_router_logits=True)
    assert type(model) is stock_module.Qwen2MoeForCausalLM


def layer_launches(config):
    """BENCHMARKS.md's breakdown: a sparse layer launches 44 kernels per decode token and those of its
    expert sum (45 at Qwen1.5-MoE's top-4), two more when the routing weights are renormalised; a
    dense layer 29."""
    sparse = 44 + greedy_checks.expert_sum_launches(config.num_experts_per_tok) + (2 if config.norm_topk_prob else 0)
    return [sparse if is_sparse_layer(config, i) else 29 for i in range(config.num_hidden_layers)]


# Stock's launches for each of the 5 decode steps of the test below, as counted on the 0.4.1 wheel and
# on the 0.4 branch at 6d1af55a5 alike:
# one decode token reaches exactly top_k experts, so the figures depend on the fixture's config
# only, not on the tokens. The last step assembles the output instead of preparing a next input.
STOCK_DECODE_LAUNCHES = {"tiny": [271] * 4 + [259], "mixed": [361] * 4 + [349]}


def test_decode_makes_no_host_sync_and_fewer_launches(stock, ours, fixture_path):
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=6, eos_token_id=None, **GREEDY)
    ours_counts = counters.count_generate(ours, kwargs)
    stock_counts = counters.count_generate(stock, kwargs)
    assert ours_counts.decode_syncs == 0
    # stock: one NonZero host sync per expert per sparse layer per token, and one host read of the
    # stopping criteria per step (generation/utils.py, np.max(unfinished_sequences.asnumpy()))
    sparse = sum(is_sparse_layer(ours.config, i) for i in range(ours.config.num_hidden_layers))
    assert stock_counts.decode_syncs == sparse * ours.config.num_experts + 1
    # ours: the pinned layer launches plus 20 outside the layers (final RMSNorm, LM head, argmax,
    # the rope tables' one gather, mask, cache slots, token bookkeeping), as counted on both
    # fixtures; the last step assembles the output instead of preparing a next input, 2 launches more
    layers = sum(layer_launches(ours.config))
    assert [step.n_ops for step in ours_counts.steps[1:]] == [layers + 20] * 4 + [layers + 22]
    size = os.path.basename(fixture_path).split("-")[1]  # fixtures.ensure names it family-size-key
    assert [step.n_ops for step in stock_counts.steps[1:]] == STOCK_DECODE_LAUNCHES[size]
    assert ours_counts.decode_ops < stock_counts.decode_ops


def test_decode_launches_per_layer_are_pinned(ours):
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=4, do_sample=False)
    assert launches_per_layer(ours, kwargs) == layer_launches(ours.config)


def test_mixed_fixture_builds_its_dense_layer_and_grouped_heads(ours):
    config = ours.config
    for index, layer in enumerate(ours.model.layers):
        assert isinstance(layer.mlp, SparseMoe) == is_sparse_layer(config, index)
        assert layer.self_attn.num_kv_heads == config.num_key_value_heads
    assert ours.allocate_cache(1, 8).num_kv_heads == config.num_key_value_heads


def test_save_and_reload_gives_identical_logits(ours, stock, tmp_path):
    ours.save_pretrained(tmp_path)
    prompt = ids_of([9, 8, 7, 6, 5])
    reloaded = Ours.from_pretrained(tmp_path).set_train(False)
    as_stock = stock_module.Qwen2MoeForCausalLM.from_pretrained(tmp_path).set_train(False)
    want = ours(input_ids=prompt).logits.asnumpy()
    assert np.array_equal(reloaded(input_ids=prompt).logits.asnumpy(), want)
    saved, loaded = as_stock(prompt).logits.asnumpy(), stock(prompt).logits.asnumpy()
    assert np.array_equal(saved, loaded)  # stock reads back what it would have loaded
    bound = moe_prefill_bound()
    if bound is None:
        np.testing.assert_array_equal(loaded, want)
    else:
        np.testing.assert_allclose(want, loaded, rtol=0, atol=bound * np.abs(loaded).max())


def test_cache_longer_than_the_rope_table_is_refused(ours):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours.allocate_cache(1, ours.config.max_position_embeddings + 1)


def test_cache_is_rounded_up_and_reused(ours):
    first = ours.allocate_cache(1, 30)
    assert first.max_len == 256  # 30 rounded up to CACHE_LENGTH_STEP (256, models/causal_lm.py)
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
        assert_same_generation(expected, got, mindspore.float16)


def test_loading_options_our_layouts_cannot_take_build_stock(fixture_path):
    model = AutoModelForCausalLM.from_pretrained(fixture_path, low_cpu_mem_usage=True)
    assert type(model) is stock_module.Qwen2MoeForCausalLM
