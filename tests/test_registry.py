"""install() points public names and auto classes at ours, keeps stock reachable, and falls back cleanly."""
import logging
import os
import subprocess
import sys
import textwrap

import pytest

import mindnlp.transformers
from mindnlp.transformers import AutoModelForCausalLM, LlamaConfig
from mindnlp.transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from mindnlp.transformers.models.llama import modeling_llama

from mindnlp.accel import registry

STOCK_LLAMA = modeling_llama.LlamaForCausalLM


class AccelLlama(registry.StockFallbackMixin, STOCK_LLAMA):
    """Stands in for an accelerated class: supports configs of at most two layers."""

    @classmethod
    def supports(cls, config):
        if config.num_hidden_layers > 2:
            return False, "more than 2 layers"
        return True, ""


def tiny_config(layers=2):
    return LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)


@pytest.fixture
def llama_entry(monkeypatch):
    """Lets a test point model type llama at another class (`point_at(accelerated, stock_module)`): our
    Llama is uninstalled for the test and installed again after it."""
    monkeypatch.setenv("MINDNLP_ACCEL", "1")
    real = registry.MODELS["llama"]
    registry.uninstall("llama")

    def point_at(accelerated, stock_module=real.stock_module):
        registry.MODELS["llama"] = registry.Entry(stock_module, real.stock_name, accelerated)

    yield point_at
    registry.uninstall("llama")
    registry.MODELS["llama"] = real
    registry.install()


@pytest.fixture
def dummy_llama(llama_entry):
    """Registers AccelLlama for model type llama."""
    llama_entry(f"{__name__}:AccelLlama")


def assert_stock_everywhere():
    assert mindnlp.transformers.LlamaForCausalLM is STOCK_LLAMA
    assert mindnlp.transformers.models.LlamaForCausalLM is STOCK_LLAMA
    assert MODEL_FOR_CAUSAL_LM_MAPPING[LlamaConfig] is STOCK_LLAMA


def test_install_points_names_and_auto_classes_at_ours(dummy_llama):
    registry.install()
    assert mindnlp.transformers.LlamaForCausalLM is AccelLlama
    assert mindnlp.transformers.models.LlamaForCausalLM is AccelLlama
    assert type(AutoModelForCausalLM.from_config(tiny_config())) is AccelLlama
    assert modeling_llama.LlamaForCausalLM is STOCK_LLAMA
    assert mindnlp.transformers.models.llama.LlamaForCausalLM is STOCK_LLAMA
    assert registry.stock_class("llama") is STOCK_LLAMA
    assert registry.accelerated_class("llama") is AccelLlama


def test_install_is_idempotent_and_undoable(dummy_llama):
    registry.install()
    registry.install()
    assert MODEL_FOR_CAUSAL_LM_MAPPING._extra_content[LlamaConfig] is AccelLlama
    registry.uninstall("llama")
    assert_stock_everywhere()


def test_unsupported_config_falls_back_to_stock_and_logs_once(dummy_llama, caplog, monkeypatch):
    registry.install()
    # mindnlp's "mindnlp" logger does not propagate to the root, where caplog listens by default.
    monkeypatch.setattr(registry.logger, "handlers", registry.logger.handlers + [caplog.handler])
    with caplog.at_level(logging.WARNING, logger="mindnlp.accel.registry"):
        first = AutoModelForCausalLM.from_config(tiny_config(layers=3))
        direct = AccelLlama(tiny_config(layers=3))
    assert type(first) is STOCK_LLAMA and type(direct) is STOCK_LLAMA
    reasons = [record.getMessage() for record in caplog.records if "more than 2 layers" in record.getMessage()]
    assert len(reasons) == 1


def test_from_pretrained_checks_the_saved_config(dummy_llama, tmp_path):
    for layers, expected in ((2, AccelLlama), (3, STOCK_LLAMA)):
        directory = tmp_path / f"layers{layers}"
        STOCK_LLAMA(tiny_config(layers)).save_pretrained(str(directory))
        assert type(AccelLlama.from_pretrained(str(directory))) is expected


def test_absent_modules_are_skipped(llama_entry):
    llama_entry("mindnlp.accel.models.not_written_yet:LlamaForCausalLM",
                "mindnlp.transformers.models.not_there.modeling")
    assert registry.accelerated_class("llama") is None
    assert registry.stock_class("llama") is None
    registry.install()
    assert_stock_everywhere()


def test_unknown_model_type():
    assert registry.accelerated_class("bert") is None
    with pytest.raises(KeyError):
        registry.stock_class("bert")


PROBE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.environ["MINDNLP_TREE"])
    import mindspore
    mindspore.set_device("CPU")
    import mindnlp.transformers as transformers
    from mindnlp.accel import registry

    from mindnlp.transformers.models.llama.modeling_llama import LlamaForCausalLM as Stock

    class Accel(registry.StockFallbackMixin, Stock):
        @classmethod
        def supports(cls, config):
            return True, ""

    entry = registry.MODELS["llama"]
    registry.uninstall("llama")  # our Llama, installed on import
    registry.MODELS["llama"] = registry.Entry(entry.stock_module, entry.stock_name, "__main__:Accel")
    registry.install()
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    print(type(transformers.AutoModelForCausalLM.from_config(config)).__name__,
          transformers.LlamaForCausalLM.__name__, registry.accelerated_class("llama") is None)
""")


@pytest.mark.parametrize("switch,expected", [("0", "LlamaForCausalLM LlamaForCausalLM True"),
                                             ("1", "Accel Accel False")])
def test_environment_switch(switch, expected):
    env = dict(os.environ, MINDNLP_ACCEL=switch)
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == expected
