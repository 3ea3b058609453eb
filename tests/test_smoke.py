"""Smoke checks of the patched tree: the hook is in place, the switch works, a model generates."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindnlp

pytestmark = pytest.mark.smoke
TREE = os.environ["MINDNLP_TREE"]


def test_install_hook_runs_from_the_patched_tree():
    import mindnlp.accel
    import mindnlp.transformers

    assert mindnlp.accel.__file__.startswith(TREE)
    assert callable(mindnlp.transformers._install_accel)


def result_line(stdout):
    """The words after RESULT; MindSpore writes its own lines to stdout too."""
    return next(line.split()[1:] for line in stdout.splitlines() if line.startswith("RESULT "))


def test_switch_off_leaves_stock_in_place():
    code = ("import mindnlp.accel as a, mindnlp.transformers as t; "
            "from mindnlp.transformers.models.llama import modeling_llama as m; "
            "print('RESULT', a.enabled(), t.LlamaForCausalLM is m.LlamaForCausalLM)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=TREE, MINDNLP_ACCEL="0"))
    assert out.returncode == 0, out.stderr
    assert result_line(out.stdout) == ["False", "True"]


def test_tiny_llama_generates_greedily():
    import mindspore
    from mindnlp.transformers import LlamaConfig, LlamaForCausalLM

    mindspore.set_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).set_train(False)
    ids = mindspore.Tensor(np.array([[1, 5, 9, 3]], dtype=np.int64))
    out = model.generate(input_ids=ids, do_sample=False, max_new_tokens=5,
                         return_dict_in_generate=True, output_logits=True)
    assert out.sequences.shape == (1, 9)
    assert len(out.logits) == 5
    steps = np.stack([step.asnumpy() for step in out.logits])
    assert (steps.argmax(-1)[:, 0] == out.sequences.asnumpy()[0, 4:]).all()
    assert mindnlp.__file__.startswith(TREE)
