"""Our deepseek-moe against stock's arithmetic on the generated fixtures: outputs, registration on both
bases, fallbacks, loading, launches, syncs, and the router on tied probabilities.

CI's base (the 0.4.1 wheel) has no deepseek, so "stock" here is deepseek_reference.py, which follows
the 0.4 branch's code op by op; on a branch base (MINDNLP_BASE naming a checkout of the 0.4 branch)
the reference is first proved bit-identical to the branch's real stock model, run on the CPU with the
three stand-ins of eval/deepseek_cpu_shims.py applied by the test, and ours is compared with that
stock directly too. Two fixtures: "tiny" (a dense first layer, 8 experts top-2, MHA) and "mixed"
(3 layers, 6 experts top-3 renormalised); other top-k and norm_topk_prob values through config
overrides. Equality is bit for bit, except after a prefill through the MoE on a CPU whose matmul
rounds a row by the call's row count (see greedy_checks.moe_prefill_bound): the reference, like
stock, runs each expert over exactly its own tokens.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore
from mindnlp.core import ops
from mindnlp.transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import counters
import deepseek_cpu_shims
import fixtures
import greedy_checks
import judge
from conftest import TREE
from deepseek_reference import DeepseekReference
from greedy_checks import FIXTURES, GREEDY, ids_of, launches_per_layer, moe_prefill_bound
from mindnlp.accel import registry
from mindnlp.accel.layers.moe import SparseMoe
from mindnlp.accel.layers.moe_router import RouterConfig, route
from mindnlp.accel.models.deepseek import DeepseekForCausalLM as Ours, is_sparse_layer

STOCK = registry.stock_class("deepseek")
needs_stock = pytest.mark.skipif(STOCK is None, reason="this base has no stock deepseek (the 0.4.1 wheel); set "
                                                       "MINDNLP_BASE to a checkout of the 0.4 branch to run this")


def assert_same_generation(expected, got, dtype=mindspore.float32):
    greedy_checks.assert_same_generation(expected, got, moe_prefill_bound(dtype))


@pytest.fixture(scope="module", params=["tiny", "mixed"])
def fixture_path(request):
    return fixtures.ensure("deepseek", request.param, FIXTURES)


@pytest.fixture(scope="module")
def ours(fixture_path):  # pylint: disable=redefined-outer-name
    return AutoModelForCausalLM.from_pretrained(fixture_path).set_train(False)


@pytest.fixture(scope="module")
def reference(fixture_path):  # pylint: disable=redefined-outer-name
    return DeepseekReference(fixture_path)


def fast_generate(model, calls, **kwargs):
    return greedy_checks.fast_generate(model, Ours, calls, **kwargs)


def prompt_of(length):
    return ids_of([100000] + list(range(40, 40 + 3 * (length - 1), 3)))


def judge_inputs(fixture_path):  # pylint: disable=redefined-outer-name
    """generate() inputs of the judge's three prompts, chat template applied."""
    tokenizer = AutoTokenizer.from_pretrained(fixture_path)
    return [judge.prepare_inputs("deepseek", None, tokenizer, case) for _, case in judge.prompt_cases("deepseek", None)]


def stock_generate(model, **kwargs):
    with deepseek_cpu_shims.stock_deepseek_on_cpu():
        return model.generate(**kwargs)


@pytest.mark.smoke
def test_auto_class_resolves_to_ours(ours):
    assert isinstance(ours, Ours)
    assert isinstance(ours.config, Ours.config_class)
    if STOCK is not None:
        assert Ours.config_class is STOCK.config_class  # registered over stock's, under stock's config


@pytest.mark.parametrize("length,new_tokens", [(1, 4), (7, 9), (23, 12)])
def test_greedy_equals_reference(reference, ours, stock_generate_calls, length, new_tokens):
    prompt = prompt_of(length)
    got = fast_generate(ours, stock_generate_calls, input_ids=prompt, max_new_tokens=new_tokens, **GREEDY)
    assert_same_generation(reference.generate(prompt, new_tokens), got)


@pytest.mark.parametrize("top_k,norm_topk_prob", [(1, True), (3, True), (4, False)])
def test_other_router_settings_equal_reference(fixture_path, stock_generate_calls, top_k, norm_topk_prob):
    """top_k 1 with norm_topk_prob set is not renormalised (stock's `top_k > 1` condition)."""
    overrides = dict(num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob)
    ours = AutoModelForCausalLM.from_pretrained(fixture_path, **overrides).set_train(False)
    prompt = prompt_of(11)
    got = fast_generate(ours, stock_generate_calls, input_ids=prompt, max_new_tokens=6, **GREEDY)
    assert_same_generation(DeepseekReference(fixture_path, **overrides).generate(prompt, 6), got)


@pytest.mark.smoke
def test_judge_prompts_equal_reference(reference, ours, stock_generate_calls, fixture_path):
    for inputs in judge_inputs(fixture_path):
        assert inputs["attention_mask"].asnumpy().all()  # the reference serves unpadded prompts
        got = fast_generate(ours, stock_generate_calls, **inputs, max_new_tokens=10, **GREEDY)
        assert_same_generation(reference.generate(inputs["input_ids"], 10), got)


def test_half_precision_follows_stock_dtype_policy(fixture_path):
    """fp16 (the CPU's stand-in for bf16) shows each of stock's casts and roundings: the router's
    softmax and topk in the activation dtype, the expert sums rounded after every add."""
    ours16 = AutoModelForCausalLM.from_pretrained(fixture_path, ms_dtype=mindspore.float16).set_train(False)
    assert isinstance(ours16, Ours) and ours16.lm_head.weight.dtype == mindspore.float16
    reference16 = DeepseekReference(fixture_path, mindspore.float16)
    for inputs in judge_inputs(fixture_path)[:2]:
        got = ours16.generate(**inputs, max_new_tokens=8, **GREEDY)
        assert_same_generation(reference16.generate(inputs["input_ids"], 8), got, mindspore.float16)


@needs_stock
@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
def test_reference_is_the_branch_stock_bit_for_bit(fixture_path, dtype):
    stock = STOCK.from_pretrained(fixture_path, ms_dtype=dtype).set_train(False)
    reference = DeepseekReference(fixture_path, dtype)
    prompts = [prompt_of(length) for length in (1, 7, 23)] + [i["input_ids"] for i in judge_inputs(fixture_path)]
    for prompt in prompts:
        expected = stock_generate(stock, input_ids=prompt, attention_mask=ops.ones_like(prompt), max_new_tokens=6,
                                  **GREEDY)
        greedy_checks.assert_same_generation(expected, reference.generate(prompt, 6))


@needs_stock
def test_judge_prompts_equal_branch_stock(ours, stock_generate_calls, fixture_path):
    stock = STOCK.from_pretrained(fixture_path).set_train(False)
    for inputs in judge_inputs(fixture_path):
        expected = stock_generate(stock, **inputs, max_new_tokens=10, **GREEDY)
        got = fast_generate(ours, stock_generate_calls, **inputs, max_new_tokens=10, **GREEDY)
        assert_same_generation(expected, got)


@pytest.mark.skipif(STOCK is not None, reason="on a branch base the config class and base are stock's")
def test_own_config_and_weight_init_on_a_base_without_deepseek():
    make = Ours.config_class
    config = make(vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=None, n_routed_experts=4, num_experts_per_tok=2,
                  n_shared_experts=1, first_k_dense_replace=1, pad_token_id=0, initializer_range=0.5)
    assert (config.num_key_value_heads, config.bos_token_id, config.eos_token_id) == (4, 100000, 100001)
    assert config.tie_word_embeddings is False and config.rope_scaling is None and make().hidden_size == 4096
    for bad in ({"type": "yarn", "factor": 2.0}, {"type": "linear", "factor": 2}, {"type": "linear"}):
        with pytest.raises(ValueError, match="rope_scaling"):
            make(rope_scaling=bad)
    embed = Ours(config).model.embed_tokens.weight.asnumpy()
    assert not embed[0].any() and 0.4 < embed[1:].std() < 0.6  # the padding row, normal(0, 0.5) elsewhere


@pytest.mark.skipif(STOCK is not None, reason="on a branch base stock's own registration is tested")
def test_registration_of_a_model_type_mindnlp_lacks_is_undone_and_redone():
    from mindnlp.transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from mindnlp.transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    assert CONFIG_MAPPING["deepseek"] is Ours.config_class
    try:
        registry.uninstall("deepseek")
        assert "deepseek" not in CONFIG_MAPPING
        assert Ours.config_class not in MODEL_FOR_CAUSAL_LM_MAPPING._extra_content
    finally:
        registry.install()
    assert MODEL_FOR_CAUSAL_LM_MAPPING[Ours.config_class] is Ours


@pytest.mark.parametrize("override", [dict(num_experts_per_tok=None), dict(num_experts_per_tok=99)])
def test_a_router_config_ours_cannot_build_is_refused_with_its_reason(fixture_path, override):
    ok, reason = Ours.supports(AutoConfig.from_pretrained(fixture_path, **override))
    assert not ok and "num_experts_per_tok" in reason


@needs_stock
def test_unsupported_config_builds_stock(fixture_path):
    model = AutoModelForCausalLM.from_pretrained(fixture_path, pretraining_tp=2)
    assert type(model) is STOCK


@pytest.mark.skipif(STOCK is not None, reason="the base has stock deepseek to fall back to")
def test_unsupported_config_without_stock_is_a_clear_error(fixture_path):
    with pytest.raises(ValueError, match=r"does not support this config \(pretraining_tp 2.*no stock class"):
        AutoModelForCausalLM.from_pretrained(fixture_path, pretraining_tp=2)


DISABLED_PROBE = """
import sys, mindspore
mindspore.set_device("CPU")
from mindnlp.transformers import AutoModelForCausalLM
try:
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
except Exception as error:
    print("ERROR", type(error).__name__, str(error).splitlines()[0])
else:
    print("CLASS", type(model).__module__)
"""


def test_accel_disabled_gives_stock_or_a_clear_error(fixture_path):
    """MINDNLP_ACCEL=0: stock where the base has deepseek, else mindnlp's own unknown-model error."""
    env = dict(os.environ, MINDNLP_ACCEL="0", PYTHONPATH=TREE)
    proc = subprocess.run([sys.executable, "-c", DISABLED_PROBE, fixture_path], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith(("ERROR", "CLASS"))]
    if STOCK is not None:
        assert result == [f"CLASS {STOCK.__module__}"]
    else:
        assert len(result) == 1 and result[0].startswith("ERROR") and "deepseek" in result[0], result


def test_config_round_trips_through_the_auto_classes(fixture_path, tmp_path):
    config = AutoConfig.from_pretrained(fixture_path)
    assert type(config) is Ours.config_class and config.n_routed_experts == fixtures.model_config(
        "deepseek", os.path.basename(fixture_path).split("-")[1])["n_routed_experts"]
    config.save_pretrained(tmp_path)
    reread = AutoConfig.from_pretrained(tmp_path).to_dict()
    assert {k: v for k, v in reread.items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def test_layers_follow_first_k_dense_replace_and_moe_layer_freq(fixture_path):
    config = AutoConfig.from_pretrained(fixture_path, num_hidden_layers=5, first_k_dense_replace=1, moe_layer_freq=2)
    model = Ours(config)
    assert [isinstance(layer.mlp, SparseMoe) for layer in model.model.layers] == [False, False, True, False, True]
    assert [is_sparse_layer(config, i) for i in range(5)] == [False, False, True, False, True]
    shared = model.model.layers[2].mlp.shared_experts.down_proj.weight
    assert shared.shape == (config.hidden_size, config.n_shared_experts * config.moe_intermediate_size)


# Per decode token in fp32 (where stock's casts launch nothing), each one of stock's own arithmetic
# steps, measured on both fixtures: a dense layer 28, as Llama's (Qwen2-MoE's 29 adds the q/k/v
# bias); a sparse layer 41 and those of its expert sum (42 at deepseek's top-6), 3 more when the
# routing weights are renormalised (ReduceSum, the Add of 1e-20, the division). Against Qwen2-MoE's
# sparse layer (44 and the sum): no q/k/v bias and no shared-expert gate (its MatMul block is shared
# with the router; Sigmoid, Mul).
def layer_launches(config):
    top_k = config.num_experts_per_tok
    sparse = 41 + greedy_checks.expert_sum_launches(top_k) + (3 if config.norm_topk_prob and top_k > 1 else 0)
    return [sparse if is_sparse_layer(config, i) else 28 for i in range(config.num_hidden_layers)]


def test_decode_launches_per_layer_are_pinned(ours):
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=4, do_sample=False)
    assert launches_per_layer(ours, kwargs) == layer_launches(ours.config)


def test_decode_makes_no_host_sync(ours):
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=6, eos_token_id=None, **GREEDY)
    counts = counters.count_generate(ours, kwargs)
    # a prefill reads the prompt's ids and mask, host data the tokenizer made (generation.step.first_state)
    assert counts.decode_syncs == 0 and counts.prefill_syncs <= 2


@needs_stock
def test_decode_launches_fewer_than_stock(ours, fixture_path):
    """On these 2- and 3-layer fixtures; the topology fixture's ratio is in BENCHMARKS.md."""
    stock = STOCK.from_pretrained(fixture_path).set_train(False)
    kwargs = dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=6, eos_token_id=None, **GREEDY)
    with deepseek_cpu_shims.stock_deepseek_on_cpu():
        stock_counts = counters.count_generate(stock, kwargs)
    ours.generate(**kwargs)  # the kernel self-checks of a first call are not decode launches
    ours_counts = counters.count_generate(ours, kwargs)
    sparse = sum(is_sparse_layer(ours.config, i) for i in range(ours.config.num_hidden_layers))
    assert stock_counts.decode_syncs >= sparse  # its expert loop tests each expert's count on the host
    assert ours_counts.decode_ops < stock_counts.decode_ops


def test_save_and_reload_gives_identical_logits(ours, reference, tmp_path):
    """Saved in Hugging Face names and values: ours reloads it, and the reference reads it as the fixture."""
    ours.save_pretrained(tmp_path)
    prompt = ids_of([9, 8, 7, 6, 5])
    reloaded = Ours.from_pretrained(tmp_path).set_train(False)
    assert np.array_equal(reloaded(input_ids=prompt).logits.asnumpy(), ours(input_ids=prompt).logits.asnumpy())
    saved = DeepseekReference(str(tmp_path))
    assert set(saved.weights) == set(reference.weights)
    greedy_checks.assert_same_generation(reference.generate(prompt, 3), saved.generate(prompt, 3))


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
def test_router_breaks_ties_as_stock_topk(dtype):
    """Equal probabilities (likely in bf16 over 64 experts): ours picks the experts stock's
    topk(sorted=False) picks on this backend, whatever its tie-breaking."""
    logits = np.zeros((4, 8), dtype=np.float32)
    logits[0, [1, 3, 5, 6]] = 1.0   # four tied at the top, two picked
    logits[1, :] = 0.5              # all tied
    logits[2, [0, 7]] = 2.0         # a tied pair at the top
    logits[3, [2, 4, 6]] = -1.0     # five tied at the top
    logits = mindspore.Tensor(logits).to(dtype)
    router = RouterConfig(8, 2, softmax_dtype=None, topk_sorted=False)
    routing = route(logits, router, dtype)
    _, stock_experts = ops.topk(ops.softmax(logits, dim=-1), k=2, dim=-1, sorted=False)
    assert np.sort(routing.experts.asnumpy(), -1).tolist() == np.sort(stock_experts.asnumpy(), -1).tolist()
