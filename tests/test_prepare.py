"""The prepare pass: every kernel choice is settled before the first forward, never inside one."""
import os
import warnings

import numpy as np
import pytest
import mindspore
from mindspore import Tensor

import fixtures
from mindnlp.accel import device
from mindnlp.accel.layers import Linear
from mindnlp.accel.layers import linear as linear_module
from mindnlp.accel.models.qwen2_moe import Qwen2MoeForCausalLM as Ours
from mindnlp.core import nn
from mindnlp.core.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ours():
    path = fixtures.ensure("qwen2_moe", "mixed", os.path.join(ROOT, "eval_cache", "fixtures"))
    return Ours.from_pretrained(path).set_train(False)


@pytest.fixture
def as_on_ascend(monkeypatch):
    """The device query says Ascend, so every self-check runs (the fused kernels fail here: twins)."""
    monkeypatch.setattr(device, "on_ascend", lambda: True)
    device.reset_choices()
    yield
    device.reset_choices()


def test_generate_makes_every_choice_before_its_first_forward(ours, as_on_ascend, monkeypatch):
    checks = []
    real_choose, real_fusion_check = device.choose, linear_module.FusedLinear._fusion_is_exact
    in_forward = []

    def choose(*args, **kwargs):
        checks.append(bool(in_forward))
        return real_choose(*args, **kwargs)

    def fusion_check(*args, **kwargs):
        checks.append(bool(in_forward))
        return real_fusion_check(*args, **kwargs)

    real_forward = type(ours.model).forward

    def forward(self, *args, **kwargs):
        in_forward.append(True)
        try:
            return real_forward(self, *args, **kwargs)
        finally:
            in_forward.pop()

    monkeypatch.setattr(device, "choose", choose)
    monkeypatch.setattr(linear_module.FusedLinear, "_fusion_is_exact", fusion_check)
    monkeypatch.setattr(type(ours.model), "forward", forward)
    prompt = Tensor(np.array([[5, 6, 7, 8]], np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # each refused fused kernel warns once
        ours.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
    # rotary, both attention kernels and the MoE prefill path per layer kind, the fusion checks
    assert len(checks) >= 4
    assert not any(checks), "a kernel choice was made inside a forward"


def test_unprepared_forward_runs_the_twins_with_the_same_bits(ours):
    prompt = Tensor(np.array([[9, 8, 7, 6, 5]], np.int64))
    unprepared = ours(input_ids=prompt).logits.asnumpy()
    ours.prepare(1)
    np.testing.assert_array_equal(ours(input_ids=prompt).logits.asnumpy(), unprepared)


def test_linear_copy_is_not_used_once_the_weight_is_rebound():
    """Tying or resizing embeddings rebinds `weight` to another Parameter: the CPU transposed copy
    of the old one must not be used (stale), F.linear serves until the next prepare."""
    layer = Linear(8, 4, bias=False)
    layer.prepare_kernels(mindspore.float32, 1)
    x = Tensor(np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    layer.weight = nn.Parameter(Tensor(np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)))
    want = F.linear(x, layer.weight, None).asnumpy()
    np.testing.assert_array_equal(layer(x).asnumpy(), want)
    layer.prepare_kernels(mindspore.float32, 1)
    np.testing.assert_array_equal(layer(x).asnumpy(), want)
