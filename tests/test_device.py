"""device.choose: fused kernels are tried only on Ascend, checked against their twin, and cached."""
import warnings

import numpy as np
import pytest
import mindspore
from mindspore import Tensor

from mindnlp.accel import device


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.delenv(device.FUSED_ENV, raising=False)
    device.reset_choices()
    yield
    device.reset_choices()


@pytest.fixture
def ascend(monkeypatch):
    """Pretend to be on Ascend, so the self-check branch runs on this CPU."""
    monkeypatch.setattr(device, "on_ascend", lambda: True)


def make_inputs():
    return (Tensor(np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)),)


def twin(x):
    return x * 2.0


class Spy:
    """A fused stand-in that records its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x):
        self.calls += 1
        return self.fn(x)


def raising(x):
    raise RuntimeError("kernel not supported")


def test_reports_cpu_backend():
    assert device.device_target() == "CPU"
    assert not device.on_ascend()
    assert not device.fused_enabled()


def test_off_ascend_returns_twin_without_trying():
    fused = Spy(lambda x: x + x)
    assert device.choose("k", fused, twin, make_inputs) is twin
    assert fused.calls == 0


def test_raising_kernel_falls_back_with_one_warning(ascend):
    with pytest.warns(RuntimeWarning, match="'k'.*raised RuntimeError"):
        assert device.choose("k", raising, twin, make_inputs) is twin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device.choose("k", raising, twin, make_inputs) is twin


def test_drifting_kernel_falls_back(ascend):
    drifting = Spy(lambda x: x * 2.0 + 1e-3)
    with pytest.warns(RuntimeWarning, match="differs from its twin"):
        chosen = device.choose("k", drifting, twin, make_inputs, atol=1e-5, rtol=1e-5)
    assert chosen is twin
    assert drifting.calls == 1  # the first disagreeing probe decides


def test_wrong_shape_falls_back(ascend):
    with pytest.warns(RuntimeWarning, match="shape"):
        assert device.choose("k", lambda x: x.reshape(-1), twin, make_inputs) is twin


def test_agreeing_kernel_is_chosen_once(ascend):
    agreeing = Spy(lambda x: x + x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device.choose("k", agreeing, twin, make_inputs) is agreeing
        assert device.choose("k", agreeing, twin, make_inputs) is agreeing
    assert agreeing.calls == device.CHECK_PROBES  # every probe of the first call, none after


def test_a_kernel_within_tolerance_is_refused_by_default(ascend):
    close = Spy(lambda x: x * 2.0 + 1e-6)
    with pytest.warns(RuntimeWarning, match=device.INEXACT_ENV):
        assert device.choose("k", close, twin, make_inputs, atol=1e-5) is twin


def test_inexact_switch_admits_small_differences_only(ascend, monkeypatch):
    monkeypatch.setenv(device.INEXACT_ENV, "1")
    close = Spy(lambda x: x * 2.0 + 1e-6)
    assert device.choose("k", close, twin, make_inputs, atol=1e-5) is close
    with pytest.warns(RuntimeWarning, match="differs from its twin"):
        assert device.choose("far", lambda x: x * 2.0 + 1e-3, twin, make_inputs, atol=1e-5) is twin


def test_names_are_decided_separately(ascend):
    assert device.choose("a", lambda x: x + x, twin, make_inputs) is not twin
    with pytest.warns(RuntimeWarning):
        assert device.choose("b", raising, twin, make_inputs) is twin


def test_env_switch_forces_twins(ascend, monkeypatch):
    monkeypatch.setenv(device.FUSED_ENV, "0")
    fused = Spy(lambda x: x + x)
    assert device.choose("k", fused, twin, lambda: pytest.fail("inputs must not be built")) is twin
    assert fused.calls == 0


def test_compares_multiple_outputs(ascend):
    def twin_pair(x):
        return x, x.astype(mindspore.float16)

    with pytest.warns(RuntimeWarning, match="differs"):
        assert device.choose("k", lambda x: (x, x.astype(mindspore.float16) + 1), twin_pair,
                             make_inputs) is twin_pair


def test_a_kernel_wrong_on_one_probe_only_is_refused(ascend):
    """Each probe draws new inputs, and one disagreement among them rejects the kernel: a kernel
    that differs from its twin on rare inputs (as a reordered sum does) is not adopted on the
    strength of the first draw."""
    draws = []

    def fresh_inputs():
        draws.append(len(draws))
        return (Tensor(np.full((3, 4), float(len(draws)), np.float32)),)

    def wrong_on_third_draw(x):
        return x * 2.0 + (1e-3 if float(x[0, 0]) == 3.0 else 0.0)

    with pytest.warns(RuntimeWarning, match="differs from its twin"):
        assert device.choose("k", wrong_on_third_draw, twin, fresh_inputs) is twin
    assert len(draws) == 3
