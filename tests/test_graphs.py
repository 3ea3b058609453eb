"""The graph facility (mindnlp.accel.graphs): every way a graph can fail leaves PyNative's result bit
for bit, with one warning; a MindSpore without one of the private names it needs leaves every graph
off and the PyNative acceleration on; calls trace capture cannot record are refused while tracing.
The decode step and the prefill are its users here (tests/test_generation_compiled.py holds them to
PyNative within their bound)."""
import warnings

import numpy as np
import pytest

import mindspore

from greedy_checks import assert_same_generation
from mindnlp.accel.generation.decode_graph import TRUST_STEPS, compiled_decode
from mindnlp.accel.generation.prefill_graph import compiled_prefill
from mindnlp.accel.graphs import TracedGraph, mindspore_trace, trust, untraced_calls_refused
from test_generation_compiled import PROMPTS, fresh_graphs, generate, load


@pytest.fixture(scope="module")
def tiny():
    return load("qwen2_moe", "tiny")


@pytest.fixture
def expected(tiny, monkeypatch):
    """PyNative's generation of the first prompt; graphs forgotten afterwards."""
    want = generate(tiny, monkeypatch, False, PROMPTS[0])
    fresh_graphs(tiny)
    return want


def graphs_of(kind, monkeypatch, wrap):
    """Make every graph of `kind` call wrap(graph, run) instead of itself (run() calls it)."""
    real = TracedGraph.__call__

    def call(graph, *tensors):
        if graph.kind != kind:
            return real(graph, *tensors)
        return wrap(graph, lambda: real(graph, *tensors))

    monkeypatch.setattr(TracedGraph, "__call__", call)


def test_a_compile_error_leaves_pynative_with_one_warning(tiny, expected, monkeypatch):
    def failing_trace(fn):
        def run(*tensors):
            raise RuntimeError("capture failed")
        return run

    monkeypatch.setattr(mindspore_trace, "trace", failing_trace)
    with pytest.warns(RuntimeWarning) as caught:
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert_same_generation(expected, got)  # bit for bit: every step ran in PyNative
    messages = [str(w.message) for w in caught if "capture failed" in str(w.message)]
    # the decode step once for the model; the prefill once per bucket (8 and 16)
    assert len([m for m in messages if "decode step" in m]) == 1 and len(messages) == 3, messages
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # refused once: no second warning
        assert_same_generation(expected, generate(tiny, monkeypatch, True, PROMPTS[0]))
    assert compiled_decode(tiny).verdict.startswith("failed to compile")


def test_a_trace_abandoned_midway_leaves_pynative_working(tiny, expected, monkeypatch):
    """A graph that raises while it is traced: MindSpore (2.6) cannot abort a trace (its recorder
    would stay open and fail every later operator), so the error is caught inside, the trace ends
    normally, and the error then refuses the graph; PyNative must run unharmed."""
    from mindnlp.accel.graphs import capture

    calls = []

    def failing_inside_the_trace():
        calls.append(1)
        raise RuntimeError("graph broke during capture")

    monkeypatch.setattr(capture, "untraced_calls_refused", failing_inside_the_trace)
    with pytest.warns(RuntimeWarning, match="failed to compile .*during capture"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert len(calls) == 3  # buckets 8 and 16, and the decode step
    assert_same_generation(expected, got)


def test_a_disagreement_at_the_trust_steps_refuses_the_decode_step(tiny, expected, monkeypatch):
    steps_run = []

    def drifting(graph, run):
        steps_run.append(1)
        out = run()
        drift = 1e-3 if len(steps_run) == TRUST_STEPS else 0.0  # only the last trust step drifts
        return (out[0] * (1 + drift),) + tuple(out[1:])

    graphs_of("decode step", monkeypatch, drifting)
    with pytest.warns(RuntimeWarning, match="differs from PyNative"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert len(steps_run) == TRUST_STEPS
    assert_same_generation(expected, got)
    generate(tiny, monkeypatch, True, PROMPTS[0])
    assert len(steps_run) == TRUST_STEPS  # refused for the process: never run again


def test_a_prefill_bucket_that_disagrees_is_refused_alone(tiny, expected, monkeypatch):
    def broken_bucket_8(graph, run):
        out = run()
        return (out[0] * float("nan"),) + tuple(out[1:]) if graph.description.startswith("bucket 8 ") else out

    graphs_of("prefill", monkeypatch, broken_bucket_8)
    with pytest.warns(RuntimeWarning, match="prefill for bucket 8 .*not finite"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert_same_generation(expected, got, 1e-5)
    assert compiled_prefill(tiny).verdict == "adopted"  # bucket 16 (scope "graph"); bucket 8 stays in PyNative
    again = generate(tiny, monkeypatch, True, PROMPTS[0])
    np.testing.assert_array_equal(again.logits[0].asnumpy(), expected.logits[0].asnumpy())


def test_an_adopted_graph_that_fails_to_run_falls_back_to_pynative(tiny, expected, monkeypatch):
    generate(tiny, monkeypatch, True, PROMPTS[0])
    assert compiled_decode(tiny).verdict == "adopted"

    def failing(graph, run):
        raise RuntimeError("device lost")

    graphs_of("decode step", monkeypatch, failing)
    with pytest.warns(RuntimeWarning, match="failed to compile or run .*device lost"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert_same_generation(expected, got, 1e-5)  # the prefill's graph served
    assert compiled_decode(tiny).verdict.startswith("failed to compile or run")


def test_the_switch_disables_every_graph(tiny, expected, monkeypatch):
    assert_same_generation(expected, generate(tiny, monkeypatch, False, PROMPTS[0]))
    for graphs in (compiled_decode(tiny), compiled_prefill(tiny)):
        assert graphs.verdict == "disabled by MINDNLP_ACCEL_JIT=0" and graphs.compiles == 0


@pytest.mark.parametrize("module_name,name", [(module, name) for module, names in mindspore_trace._NAMES.items()
                                              for name in names])
def test_a_missing_mindspore_name_keeps_graphs_off_and_pynative_acceleration_on(tiny, expected, monkeypatch,
                                                                                module_name, name):
    import importlib

    monkeypatch.delattr(importlib.import_module(module_name), name)
    monkeypatch.setattr(trust, "_warned_unavailable", [])
    try:
        assert mindspore_trace.refresh() == f"{module_name} has no {name}"
        with pytest.warns(RuntimeWarning, match=f"compiled graphs off: .*{name}") as caught:
            got = generate(tiny, monkeypatch, True, PROMPTS[0])
        assert len([w for w in caught if "compiled graphs off" in str(w.message)]) == 1
        assert type(tiny).__module__.startswith("mindnlp.accel")
        assert_same_generation(expected, got)  # ours, in PyNative
        assert not mindspore_trace.capturing()
        assert compiled_decode(tiny).compiles == compiled_prefill(tiny).compiles == 0
    finally:
        monkeypatch.undo()
        assert mindspore_trace.refresh() is None
        fresh_graphs(tiny)


def test_untraced_tensor_calls_are_refused_inside_a_trace_only():
    x = mindspore.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    index = mindspore.Tensor(np.array([2, 0], np.int32))
    with untraced_calls_refused():
        with pytest.raises(RuntimeError, match="__getitem__"):
            x[:, 1:]  # pylint: disable=pointless-statement
        with pytest.raises(RuntimeError, match="asnumpy"):
            x.asnumpy()
        with pytest.raises(RuntimeError, match="broadcast_to"):
            x.broadcast_to((2, 2, 3))
        gathered = x[:, index]  # a gather by a tensor index is recorded
    assert gathered.asnumpy().tolist() == [[2.0, 0.0], [5.0, 3.0]]
    assert x[:, 1:].asnumpy().tolist() == [[1.0, 2.0], [4.0, 5.0]]


def test_a_traced_graph_replays_by_its_phase_with_the_traced_values_replaced():
    def affine(x, y):
        return x * 2 + y, (x - y).sum()

    graph = TracedGraph(affine, "test", "two inputs")
    x = mindspore.Tensor(np.ones((2, 3), np.float32))
    first = graph(x, x)
    assert graph.phase is not None
    second = graph(x * 3, x)
    np.testing.assert_array_equal(first[0].asnumpy(), np.full((2, 3), 3.0))
    np.testing.assert_array_equal(second[0].asnumpy(), np.full((2, 3), 7.0))
    assert float(second[1].asnumpy()) == 12.0


def test_an_owners_first_input_compiles_the_larger_buckets_then_the_one_below(monkeypatch):
    from mindnlp.accel.graphs.buckets import Buckets

    class Owner:
        pass

    buckets = Buckets("MINDNLP_TEST_BUCKETS", (8, 16, 32, 64))
    monkeypatch.delenv("MINDNLP_TEST_BUCKETS", raising=False)
    assert buckets.first_compiles(Owner(), 20, below=True) == [64, 16]
    assert buckets.first_compiles(Owner(), 10, largest=32) == [32]
    assert buckets.first_compiles(Owner(), 5, below=True) == [64, 32, 16]  # nothing below 8
    assert buckets.first_compiles(Owner(), 65) == []  # longer than every bucket
    owner = Owner()
    buckets.first_compiles(owner, 20)
    assert buckets.first_compiles(owner, 3, below=True) == []  # only on the first input
    assert buckets.below(32) == 16 and buckets.below(8) == 0

