"""Our Llama against stock LlamaForCausalLM on the generated fixtures: outputs with input_ids and with
inputs_embeds (as Janus drives its language model), registration, fallbacks, loading, launches, syncs.

Two fixtures: "tiny" (2 layers, MHA as in Janus-Pro) and "mixed" (3 layers, GQA 4/2), so a model
that ignored the KV head count fails here. Every equality test asserts that our class served the call
on the fast path (stock's generate never ran for it) and compares logits bit for bit.
"""

import numpy as np
import pytest

import mindspore
import mindnlp.transformers
from mindnlp.transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from mindnlp.transformers.models.llama import modeling_llama as stock_module

import counters
import greedy_checks
import judge
from greedy_checks import GREEDY, assert_same_generation, ids_of, launches_per_layer
from mindnlp.accel.models.llama import LlamaForCausalLM as Ours



fixture_path, stock, ours = greedy_checks.model_fixtures("llama", stock_module.LlamaForCausalLM)


def fast_generate(model, calls, **kwargs):
    return greedy_checks.fast_generate(model, Ours, calls, **kwargs)


def embeddings(model, prompt):
    """What Janus hands its language model: the model's own token embeddings of the prompt."""
    return model.get_input_embeddings()(prompt)


@pytest.mark.smoke
def test_public_name_and_auto_class_are_ours(ours):
    assert isinstance(ours, Ours)
    assert mindnlp.transformers.LlamaForCausalLM is Ours
    assert stock_module.LlamaForCausalLM is not Ours


@pytest.mark.parametrize("length,new_tokens", [(1, 4), (7, 9), (23, 12)])
def test_greedy_equals_stock(stock, ours, stock_generate_calls, length, new_tokens):
    prompt = ids_of(list(range(40, 40 + 3 * length, 3)))
    expected = stock.generate(input_ids=prompt, max_new_tokens=new_tokens, **GREEDY)
    got = fast_generate(ours, stock_generate_calls, input_ids=prompt, max_new_tokens=new_tokens, **GREEDY)
    assert_same_generation(expected, got)


@pytest.mark.parametrize("length,new_tokens", [(1, 4), (9, 7), (30, 10)])
def test_inputs_embeds_equal_stock(stock, ours, stock_generate_calls, length, new_tokens):
    prompt = ids_of(list(range(7, 7 + 2 * length, 2)))
    mask = ids_of([1] * length)
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, pad_token_id=2, bos_token_id=1, eos_token_id=None,
                  **GREEDY)
    expected = stock.generate(inputs_embeds=embeddings(stock, prompt), **kwargs)
    got = fast_generate(ours, stock_generate_calls, inputs_embeds=embeddings(ours, prompt), **kwargs)
    assert got.sequences.shape == (1, new_tokens)  # with inputs_embeds only, stock returns the new ids
    assert_same_generation(expected, got)


@pytest.mark.smoke
def test_janus_prompts_equal_stock(stock, ours, stock_generate_calls, fixture_path):
    """The judge's two Janus prompts as Janus calls its LM: 576 image positions among the chat
    template's tokens, inputs_embeds with an attention mask, tokenizer ids as pad, bos and eos."""
    tokenizer = AutoTokenizer.from_pretrained(fixture_path)
    for _, case in judge.prompt_cases("llama", None):
        expected = stock.generate(**judge.prepare_inputs("llama", stock, tokenizer, case), max_new_tokens=8,
                                  **GREEDY)
        inputs = judge.prepare_inputs("llama", ours, tokenizer, case)
        assert inputs["inputs_embeds"].shape[1] > judge.JANUS_IMAGE_TOKENS
        got = fast_generate(ours, stock_generate_calls, **inputs, max_new_tokens=8, **GREEDY)
        assert_same_generation(expected, got)


@pytest.mark.parametrize("as_embeddings", [False, True])
def test_left_padded_batch_equals_stock(stock, ours, stock_generate_calls, as_embeddings):
    prompt = ids_of([0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26])
    mask = ids_of([0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1])
    kwargs = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=0, **GREEDY)
    if as_embeddings:
        expected = stock.generate(inputs_embeds=embeddings(stock, prompt), **kwargs)
        got = fast_generate(ours, stock_generate_calls, inputs_embeds=embeddings(ours, prompt), **kwargs)
    else:
        expected = stock.generate(input_ids=prompt, **kwargs)
        got = fast_generate(ours, stock_generate_calls, input_ids=prompt, **kwargs)
    assert_same_generation(expected, got)


def test_half_precision_follows_stock_dtype_policy(fixture_path):
    """fp16 (the CPU's stand-in for bf16) shows each of stock's casts and roundings: rope tables made in
    fp32 and cast, the RMSNorm composite cast back before the weight, the fp32 softmax cast back."""
    stock16 = stock_module.LlamaForCausalLM.from_pretrained(fixture_path, ms_dtype=mindspore.float16).set_train(False)
    ours16 = AutoModelForCausalLM.from_pretrained(fixture_path, ms_dtype=mindspore.float16).set_train(False)
    assert isinstance(ours16, Ours) and ours16.lm_head.weight.dtype == mindspore.float16
    tokenizer = AutoTokenizer.from_pretrained(fixture_path)
    for _, case in judge.prompt_cases("llama", None):
        expected = stock16.generate(**judge.prepare_inputs("llama", stock16, tokenizer, case), max_new_tokens=6,
                                    **GREEDY)
        got = ours16.generate(**judge.prepare_inputs("llama", ours16, tokenizer, case), max_new_tokens=6, **GREEDY)
        assert_same_generation(expected, got)
    prompt = ids_of(list(range(5, 40, 3)))
    assert_same_generation(stock16.generate(input_ids=prompt, max_new_tokens=6, **GREEDY),
                           ours16.generate(input_ids=prompt, max_new_tokens=6, **GREEDY))


# Per decoder layer per decode token in fp32 (where stock's casts launch nothing), each one of stock's
# own arithmetic steps: 2 RMSNorm composites (Pow, ReduceMean, Add, Rsqrt, 2 Mul: 12), the q/k/v
# MatMul, rotary (Mul, ReduceSum), the K/V cache write (ScatterUpdate), attention (BatchMatMul, RealDiv,
# Softmax, BatchMatMul), o_proj (MatMul), the gate/up MatMul, SiLU (Sigmoid, Mul on this backend),
# the gate-up Mul, down_proj (MatMul) and 2 residual Adds. Measured on both fixtures, MHA and GQA alike.
LAYER_LAUNCHES = 28


def test_decode_launches_per_layer_are_pinned(ours):
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=4, do_sample=False)
    assert launches_per_layer(ours, kwargs) == [LAYER_LAUNCHES] * ours.config.num_hidden_layers


def test_decode_makes_no_host_sync_and_fewer_launches(stock, ours):
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=6, eos_token_id=None, **GREEDY)
    ours_counts = counters.count_generate(ours, kwargs)
    stock_counts = counters.count_generate(stock, kwargs)
    assert ours_counts.decode_syncs == 0
    assert stock_counts.decode_syncs == 1  # the stopping criteria's read of unfinished rows, every step
    layers = ours.config.num_hidden_layers * LAYER_LAUNCHES
    # outside the layers: 22 per step (the rope offset is made int32 on the host, as the cache
    # positions are, so adding them needs no Cast); the last step assembles the output, 2 more
    assert [step.n_ops for step in ours_counts.steps[1:]] == [layers + 22] * 4 + [layers + 24]
    assert ours_counts.decode_ops < stock_counts.decode_ops


def test_direct_construction_gives_ours_as_janus_builds_it(fixture_path):
    """Janus builds its LM as mindnlp.transformers.LlamaForCausalLM(language_config)."""
    config = LlamaConfig.from_pretrained(fixture_path)
    assert type(mindnlp.transformers.LlamaForCausalLM(config)) is Ours


@pytest.mark.parametrize("override", [dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
                                      dict(pretraining_tp=2), dict(mlp_bias=True)])
def test_unsupported_config_builds_stock(fixture_path, override):
    model = AutoModelForCausalLM.from_pretrained(fixture_path, **override)
    assert type(model) is stock_module.LlamaForCausalLM


def test_attention_bias_loads_and_equals_stock(tmp_path):
    """attention_bias puts a bias on q, k, v and o: each loads into its slot of our fused layers."""
    mindspore.set_seed(5)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    stock_module.LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    stock = stock_module.LlamaForCausalLM.from_pretrained(str(tmp_path)).set_train(False)
    ours = AutoModelForCausalLM.from_pretrained(str(tmp_path)).set_train(False)
    assert isinstance(ours, Ours)
    prompt = ids_of([5, 9, 2, 31, 7])
    np.testing.assert_array_equal(ours(input_ids=prompt).logits.asnumpy(), stock(prompt).logits.asnumpy())


def test_save_and_reload_gives_identical_logits(ours, stock, tmp_path):
    ours.save_pretrained(tmp_path)
    prompt = ids_of([9, 8, 7, 6, 5])
    as_stock = stock_module.LlamaForCausalLM.from_pretrained(tmp_path).set_train(False)
    want = ours(input_ids=prompt).logits.asnumpy()
    np.testing.assert_array_equal(Ours.from_pretrained(tmp_path).set_train(False)(input_ids=prompt).logits.asnumpy(),
                                  want)
    np.testing.assert_array_equal(as_stock(prompt).logits.asnumpy(), want)
    np.testing.assert_array_equal(stock(prompt).logits.asnumpy(), want)
