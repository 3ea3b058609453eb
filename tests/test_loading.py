"""Hugging Face checkpoints into stacked experts: from_pretrained, errors, warnings, save, memory."""
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import mindspore
from mindspore import Tensor, mint

from mindnlp.core.serialization import safe_load_file, safe_save_file
from mindnlp.transformers import Qwen2MoeConfig, modeling_utils
from mindnlp.transformers.modeling_utils import no_init_weights
from mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe import (Qwen2MoeForCausalLM,
                                                                    Qwen2MoeSparseMoeBlock)

from mindnlp.accel.layers.moe import SparseMoe
from mindnlp.accel.layers.moe_experts import StackedExperts
from mindnlp.accel.loading import (MissingCheckpointWeightsError, StackedCheckpointMixin,
                                   check_complete, hf_state_dict, unfilled_checkpoint_keys)
from mindnlp.accel.models.qwen2_moe import Qwen2MoeForCausalLM as AccelQwen2Moe, sparse_moe

import fixtures
from greedy_checks import assert_moe_prefill_matches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = "model.safetensors"


class QwenMoeWithStackedExperts(StackedCheckpointMixin, Qwen2MoeForCausalLM):
    """Test-only: stock Qwen2-MoE with every sparse block replaced by SparseMoe."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            if isinstance(layer.mlp, Qwen2MoeSparseMoeBlock):
                layer.mlp = sparse_moe(config)


def tiny_config():
    return Qwen2MoeConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                          num_experts_per_tok=2, moe_intermediate_size=16,
                          shared_expert_intermediate_size=24, max_position_embeddings=64)


@pytest.fixture(scope="module")
def stock_checkpoint(tmp_path_factory):
    """A saved random tiny stock Qwen2-MoE and the model itself."""
    mindspore.set_seed(0)
    model = Qwen2MoeForCausalLM(tiny_config())
    model.eval()
    path = tmp_path_factory.mktemp("stock")
    model.save_pretrained(str(path))
    return str(path), model


INPUT_IDS = Tensor(np.array([[5, 17, 3, 88, 41, 9, 60]]), mindspore.int64)


def logits(model, input_ids=INPUT_IDS):
    return model(input_ids=input_ids).logits.asnumpy()


def test_from_pretrained_loads_hf_names_into_stacked_experts(stock_checkpoint):
    path, stock = stock_checkpoint
    ours = QwenMoeWithStackedExperts.from_pretrained(path)
    assert isinstance(ours.model.layers[1].mlp, SparseMoe)
    assert unfilled_checkpoint_keys(ours) == []
    assert_moe_prefill_matches(logits(ours), logits(stock))
    one_token = INPUT_IDS[:, :1]
    np.testing.assert_array_equal(logits(ours, one_token), logits(stock, one_token))  # one row per expert call in both


def test_stacked_layout_is_the_transposed_checkpoint(stock_checkpoint):
    path, _ = stock_checkpoint
    ours = QwenMoeWithStackedExperts.from_pretrained(path)
    state = safe_load_file(os.path.join(path, WEIGHTS))
    experts = ours.model.layers[0].mlp.experts
    prefix = "model.layers.0.mlp.experts.5."
    gate_up = experts.gate_up_weight.asnumpy()[5]
    np.testing.assert_array_equal(gate_up[:, :16], state[prefix + "gate_proj.weight"].asnumpy().T)
    np.testing.assert_array_equal(gate_up[:, 16:], state[prefix + "up_proj.weight"].asnumpy().T)
    np.testing.assert_array_equal(experts.down_weight.asnumpy()[5],
                                  state[prefix + "down_proj.weight"].asnumpy().T)


def _weights(path):
    return safe_load_file(os.path.join(path, WEIGHTS))


def _checkpoint_copy(src, dst, state, **config):
    """A checkpoint in `dst`: `src`'s JSON files with `config`'s entries set in config.json, and
    the tensors `state`."""
    for name in os.listdir(src):
        if name.endswith(".json"):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    with open(os.path.join(dst, "config.json")) as f:
        settings = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump({**settings, **config}, f)
    safe_save_file(state, os.path.join(dst, WEIGHTS), metadata={"format": "np"})
    return dst


def _checkpoint_without(src, dst, dropped):
    return _checkpoint_copy(src, dst, {k: v for k, v in _weights(src).items() if k != dropped})


# The router and the shared expert's up_proj fill rows of the block's fused input projection; the
# shared expert's down_proj is a plain Linear under its own name, missing from a checkpoint as any
# stock Linear would be.
@pytest.mark.parametrize("dropped", ["model.layers.1.mlp.experts.5.up_proj.weight",
                                     "model.layers.0.mlp.shared_expert.up_proj.weight",
                                     "model.layers.1.mlp.gate.weight"])
def test_missing_expert_weight_is_an_error(stock_checkpoint, tmp_path, dropped):
    path, _ = stock_checkpoint
    _checkpoint_without(path, str(tmp_path), dropped)
    with pytest.raises(MissingCheckpointWeightsError, match=dropped.replace(".", r"\.")):
        QwenMoeWithStackedExperts.from_pretrained(str(tmp_path))


def test_low_cpu_mem_usage_is_refused_clearly(stock_checkpoint):
    path, _ = stock_checkpoint
    with pytest.raises(ValueError, match="low_cpu_mem_usage"):
        QwenMoeWithStackedExperts.from_pretrained(path, low_cpu_mem_usage=True)


def test_save_writes_hf_names_that_stock_and_ours_reload(stock_checkpoint, tmp_path):
    path, stock = stock_checkpoint
    ours = QwenMoeWithStackedExperts.from_pretrained(path)
    ours.save_pretrained(str(tmp_path))
    saved = safe_load_file(os.path.join(str(tmp_path), WEIGHTS))
    original = safe_load_file(os.path.join(path, WEIGHTS))
    assert set(saved) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(saved[name].asnumpy(), tensor.asnumpy(), err_msg=name)
    expected = logits(stock)
    np.testing.assert_array_equal(logits(Qwen2MoeForCausalLM.from_pretrained(str(tmp_path))), expected)
    assert_moe_prefill_matches(logits(QwenMoeWithStackedExperts.from_pretrained(str(tmp_path))), expected)


# ---- our Qwen2-MoE on the tiny fixture: every missing weight raises, unused tensors are reported ----

@pytest.fixture(scope="module")
def fixture_path():
    return fixtures.ensure("qwen2_moe", "tiny", os.path.join(ROOT, "eval_cache", "fixtures"))


@pytest.fixture
def load_warnings(caplog):
    """The warnings logged by stock's loader while the test runs (mindnlp's loggers do not
    propagate to the root logger, where caplog listens)."""
    logger = logging.getLogger(modeling_utils.__name__)
    logger.addHandler(caplog.handler)
    yield lambda: [record.getMessage() for record in caplog.records
                   if record.name == logger.name and record.levelno == logging.WARNING]
    logger.removeHandler(caplog.handler)


def _weight_warnings(messages):
    """Stock's warnings about missing ("Some weights of X were not initialized") and unexpected
    ("Some weights of the model checkpoint ... were not used") weights."""
    return [message for message in messages if message.startswith("Some weights of")]


@pytest.mark.parametrize("dropped", ["model.layers.1.self_attn.o_proj.weight",
                                     "model.layers.0.post_attention_layernorm.weight",
                                     "lm_head.weight"])
def test_missing_plain_weight_is_an_error(fixture_path, tmp_path, dropped):
    _checkpoint_without(fixture_path, str(tmp_path), dropped)
    with pytest.raises(MissingCheckpointWeightsError, match=re.escape(dropped)):
        AccelQwen2Moe.from_pretrained(str(tmp_path))


# Tensors no parameter or slot takes; the last two end like names that slots do take.
EXTRA = {"model.layers.0.mlp.experts.0.extra.weight": (4, 64),
         "model.layers.0.self_attn.q_proj.lora.weight": (8, 64),
         "model.layers.0.mlp.experts.0.lora.up_proj.weight": (8, 64),
         "model.layers.1.mlp.gate_proj.weight": (8, 64)}


def test_unused_checkpoint_tensors_are_reported_as_stock_reports_them(fixture_path, tmp_path, load_warnings):
    extra = {name: Tensor(np.ones(shape, np.float32)) for name, shape in EXTRA.items()}
    path = _checkpoint_copy(fixture_path, str(tmp_path), {**_weights(fixture_path), **extra})
    AccelQwen2Moe.from_pretrained(path)
    ours = _weight_warnings(load_warnings())
    assert len(ours) == 1
    assert ours[0].startswith(f"Some weights of the model checkpoint at {path} were not used when "
                              f"initializing Qwen2MoeForCausalLM: {sorted(EXTRA)}\n")
    Qwen2MoeForCausalLM.from_pretrained(path)  # stock logs the same warning
    assert _weight_warnings(load_warnings()) == ours * 2


def test_complete_checkpoint_logs_no_missing_or_unused_weights(fixture_path, load_warnings):
    AccelQwen2Moe.from_pretrained(fixture_path)
    assert _weight_warnings(load_warnings()) == []


def _weights_but_lm_head(fixture_path, strip=""):
    """The fixture's tensors but lm_head.weight, `strip` cut from the front of their names."""
    return {name[len(strip):]: tensor for name, tensor in _weights(fixture_path).items()
            if name != "lm_head.weight"}


def test_tied_lm_head_is_not_missing(fixture_path, tmp_path, load_warnings):
    path = _checkpoint_copy(fixture_path, str(tmp_path), _weights_but_lm_head(fixture_path),
                            tie_word_embeddings=True)
    model = AccelQwen2Moe.from_pretrained(path)
    assert _weight_warnings(load_warnings()) == []
    np.testing.assert_array_equal(model.lm_head.weight.float().asnumpy(),
                                  model.model.embed_tokens.weight.float().asnumpy())


def test_checkpoint_of_the_base_model_loads(fixture_path, tmp_path, load_warnings):
    """Names without the `model.` prefix, as a saved Qwen2MoeModel has them (stock loads those into
    the base model)."""
    state = _weights_but_lm_head(fixture_path, strip="model.")
    path = _checkpoint_copy(fixture_path, str(tmp_path), state, tie_word_embeddings=True)
    model = AccelQwen2Moe.from_pretrained(path)
    assert _weight_warnings(load_warnings()) == []
    expected = _weights(fixture_path)["model.layers.1.self_attn.q_proj.weight"].float().asnumpy()
    q_rows = model.model.layers[1].self_attn.qkv_proj.weight.float().asnumpy()[:expected.shape[0]]
    np.testing.assert_array_equal(q_rows, expected)


# ---- module level: load_state_dict ----

def block_state(seed=0):
    """A stock block's weights in checkpoint names (relative to the block)."""
    mindspore.set_seed(seed)
    return Qwen2MoeSparseMoeBlock(tiny_config()).state_dict()


def test_load_state_dict_with_a_missing_slot_reports_its_name():
    state = dict(block_state())
    del state["experts.3.gate_proj.weight"]
    block = sparse_moe(tiny_config())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*experts\.3\.gate_proj\.weight"):
        block.load_state_dict(state)
    with pytest.raises(MissingCheckpointWeightsError, match=r"experts\.3\.gate_proj\.weight"):
        check_complete(block)


def test_load_state_dict_rejects_wrong_shape_and_unknown_expert():
    block = sparse_moe(tiny_config())
    state = dict(block_state())
    state["experts.2.down_proj.weight"] = Tensor(np.zeros((16, 32), np.float32))
    with pytest.raises(RuntimeError, match=r"size mismatch for experts\.2\.down_proj\.weight"):
        block.load_state_dict(state)
    state = dict(block_state())
    state["experts.8.up_proj.weight"] = Tensor(np.zeros((16, 32), np.float32))
    with pytest.raises(RuntimeError, match=r"expert index 8 out of range"):
        block.load_state_dict(state)


def test_own_state_dict_round_trips():
    source = sparse_moe(tiny_config())
    source.load_state_dict(block_state())
    names = set(source.state_dict())
    assert {"experts.gate_up_weight", "experts.down_weight", "input_proj.weight", "shared_expert.down_proj.weight"} <= names
    copy = sparse_moe(tiny_config())
    copy.load_state_dict(source.state_dict())
    check_complete(copy)
    assert set(hf_state_dict(copy)) == set(block_state())
    np.testing.assert_array_equal(copy.experts.gate_up_weight.asnumpy(),
                                  source.experts.gate_up_weight.asnumpy())


# ---- memory: one copy of the expert weights ----

def _rss_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc peak reset")
def test_loading_holds_no_second_copy_of_the_experts():
    """Resident memory grows by the stacked parameters themselves (first touch: from_pretrained
    builds them uninitialised) and nothing more; stacking through a temporary copy of
    gate_up would add another 2/3 of them. Sources are made device-resident beforehand so
    that only the loader's own memory is measured."""
    experts_count, hidden, inter = 8, 512, 1024
    rng = np.random.default_rng(0)
    state = {}
    for j in range(experts_count):
        for name, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                            ("down_proj", (hidden, inter))):
            state[f"{j}.{name}.weight"] = mint.add(Tensor(rng.standard_normal(shape, dtype=np.float32)), 0.0)
    with no_init_weights():
        experts = StackedExperts(experts_count, hidden, inter)
    param_kb = (experts.gate_up_weight.nbytes + experts.down_weight.nbytes) // 1024
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _rss_kb("VmRSS")
    experts.load_state_dict(state)
    growth = _rss_kb("VmHWM") - before
    check_complete(experts)
    assert growth < param_kb * 4 // 3, f"peak grew {growth} kB while loading {param_kb} kB of experts"
