"""The compiled decode step (mindnlp.accel.generation_compiled) against our PyNative path.

On every family's tiny fixture (and the mixed ones of the MoE families: GQA, dense layers, other
expert counts) the compiled step must give PyNative's greedy tokens and logits within COMPILED_RTOL
of each step's largest |logit|: it attends over the whole cache under a mask where PyNative reads
the filled prefix, and the longer reductions may sum in another order (module docstring). The
fallbacks are forced one by one: a compile error, a disagreement at the trust steps, and
MINDNLP_ACCEL_JIT=0 each leave PyNative's result bit for bit, with one warning where one is due.
"""
import warnings

import numpy as np
import pytest

import mindspore
from mindnlp.transformers import AutoModelForCausalLM

import counters
import fixtures
from greedy_checks import FIXTURES, GREEDY, assert_same_generation, ids_of
from mindnlp.accel import generation_compiled
from mindnlp.accel.generation_compiled import JIT_ENV, TRUST_STEPS, compiled_decode, untraced_calls_refused

COMPILED_RTOL = 1e-5
PROMPTS = ([5, 17, 99, 3], [8, 9, 10, 11, 12, 13, 14, 15, 16])


def load(family, size):
    path = fixtures.ensure(family, size, FIXTURES)
    if family == "qwen2_vl":
        from mindnlp.transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration.from_pretrained(path).set_train(False)
    return AutoModelForCausalLM.from_pretrained(path).set_train(False)


def generate(model, monkeypatch, jit, prompt, **kwargs):
    """model.generate with the compiled step on or off, from a fresh verdict when `jit` changes."""
    monkeypatch.setenv(JIT_ENV, "1" if jit else "0")
    verdict = compiled_decode(model).verdict
    if (verdict is not None and verdict.startswith("disabled")) == jit:
        model.__dict__.pop("_compiled_decode")
    kwargs.setdefault("max_new_tokens", 12)
    return model.generate(input_ids=ids_of(*prompt) if isinstance(prompt[0], list) else ids_of(prompt),
                          **GREEDY, **kwargs)


@pytest.mark.parametrize("family,size", [("qwen2_moe", "tiny"), ("qwen2_moe", "mixed"), ("deepseek", "tiny"),
                                         ("deepseek", "mixed"), ("llama", "tiny"), ("qwen2_vl", "tiny")])
def test_compiled_step_equals_pynative_across_prompts_without_recompiling(family, size, monkeypatch):
    model = load(family, size)
    expected = [generate(model, monkeypatch, False, prompt) for prompt in PROMPTS]
    model.__dict__.pop("_compiled_decode", None)
    for _ in range(2):  # the first call decides (TRUST_STEPS of its steps run both ways), the second runs compiled
        for prompt, want in zip(PROMPTS, expected):
            assert_same_generation(want, generate(model, monkeypatch, True, prompt), COMPILED_RTOL)
    compiled = compiled_decode(model)
    assert compiled.verdict == "adopted"
    # two prompt lengths and four generate calls in one cache bucket: traced once
    assert compiled.compiles == 1


def test_a_padded_batch_and_a_repetition_penalty_compile_their_own_step(monkeypatch):
    model = load("qwen2_moe", "tiny")
    prompt = [[0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26]]
    options = dict(attention_mask=ids_of([0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]), pad_token_id=0)
    plain = generate(model, monkeypatch, False, prompt, **options)
    penalised = generate(model, monkeypatch, False, prompt, repetition_penalty=1.3, **options)
    model.__dict__.pop("_compiled_decode")
    for _ in range(2):
        assert_same_generation(plain, generate(model, monkeypatch, True, prompt, **options), COMPILED_RTOL)
        got = generate(model, monkeypatch, True, prompt, repetition_penalty=1.3, **options)
        assert_same_generation(penalised, got, COMPILED_RTOL)
    compiled = compiled_decode(model)
    assert compiled.verdict == "adopted"
    assert compiled.compiles == 2  # one graph per step layout: with and without the penalty


@pytest.fixture(scope="module")
def tiny():
    return load("qwen2_moe", "tiny")


def pynative_reference(model, monkeypatch):
    return generate(model, monkeypatch, False, PROMPTS[0])


def test_a_compile_error_leaves_pynative_with_one_warning(tiny, monkeypatch):
    expected = pynative_reference(tiny, monkeypatch)

    def failing_capture(step):
        def run(*tensors):
            raise RuntimeError("capture failed")
        return run

    monkeypatch.setattr(generation_compiled, "_capture", failing_capture)
    tiny.__dict__.pop("_compiled_decode")
    with pytest.warns(RuntimeWarning, match="failed to compile .*capture failed"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert_same_generation(expected, got)  # bit for bit: every step ran in PyNative
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # refused once: no second warning
        assert_same_generation(expected, generate(tiny, monkeypatch, True, PROMPTS[0]))
    assert compiled_decode(tiny).verdict.startswith("failed to compile")


def test_a_trace_abandoned_midway_leaves_pynative_working(tiny, monkeypatch):
    """A step that raises while it is traced: MindSpore (2.6) cannot abort a trace (its recorder
    would stay open and fail every later operator), so the error is caught inside the step, the trace
    ends normally, and the error then refuses the compiled step; PyNative must run unharmed."""
    expected = pynative_reference(tiny, monkeypatch)
    calls = []
    real = generation_compiled.untraced_calls_refused

    def failing_inside_the_trace():
        calls.append(1)
        raise RuntimeError("step broke during capture")

    monkeypatch.setattr(generation_compiled, "untraced_calls_refused", failing_inside_the_trace)
    tiny.__dict__.pop("_compiled_decode")
    with pytest.warns(RuntimeWarning, match="failed to compile .*during capture"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    monkeypatch.setattr(generation_compiled, "untraced_calls_refused", real)
    assert calls == [1]
    assert_same_generation(expected, got)


def test_a_disagreement_at_the_trust_steps_refuses_the_compiled_step(tiny, monkeypatch):
    expected = pynative_reference(tiny, monkeypatch)
    real_capture = generation_compiled._capture
    steps_run = []

    def drifting_capture(step):
        compiled = real_capture(step)

        def run(*tensors):
            steps_run.append(1)
            out = compiled(*tensors)
            drift = 1e-3 if len(steps_run) == TRUST_STEPS else 0.0  # only the last trust step drifts
            return (out[0] * (1 + drift),) + tuple(out[1:])
        return run

    monkeypatch.setattr(generation_compiled, "_capture", drifting_capture)
    tiny.__dict__.pop("_compiled_decode")
    with pytest.warns(RuntimeWarning, match="differs from PyNative"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert len(steps_run) == TRUST_STEPS
    assert_same_generation(expected, got)
    generate(tiny, monkeypatch, True, PROMPTS[0])
    assert len(steps_run) == TRUST_STEPS  # refused for the process: never run again


def test_an_adopted_graph_that_fails_to_run_falls_back_to_pynative(tiny, monkeypatch):
    expected = pynative_reference(tiny, monkeypatch)
    tiny.__dict__.pop("_compiled_decode")
    generate(tiny, monkeypatch, True, PROMPTS[0])
    compiled = compiled_decode(tiny)
    assert compiled.verdict == "adopted"

    def failing_run(*tensors):
        raise RuntimeError("device lost")

    for graph in tiny._cache.__dict__["_compiled_steps"][compiled].values():
        graph.run = failing_run
    with pytest.warns(RuntimeWarning, match="failed to compile or run .*device lost"):
        got = generate(tiny, monkeypatch, True, PROMPTS[0])
    assert_same_generation(expected, got)
    assert compiled.verdict.startswith("failed to compile or run")


def test_the_switch_disables_it(tiny, monkeypatch):
    expected = pynative_reference(tiny, monkeypatch)
    assert_same_generation(expected, generate(tiny, monkeypatch, False, PROMPTS[0]))
    compiled = compiled_decode(tiny)
    assert compiled.verdict == f"disabled by {JIT_ENV}=0" and compiled.compiles == 0


def test_a_compiled_decode_step_is_one_host_dispatch_in_the_counts(tiny, monkeypatch):
    """eval/counters.py reads a graph call as one launch and as one step, also while the first
    steps run both ways; once adopted, a decode token costs the graph call (and the EOS check where
    one falls), the issue's "at most 5 host dispatches per decode token"."""
    monkeypatch.setenv(JIT_ENV, "1")
    tiny.__dict__.pop("_compiled_decode", None)
    kwargs = dict(input_ids=ids_of(PROMPTS[0]), max_new_tokens=TRUST_STEPS + 3, **GREEDY)
    checking = counters.count_generate(tiny, kwargs)
    adopted = counters.count_generate(tiny, kwargs)
    assert compiled_decode(tiny).verdict == "adopted"
    for counts in (checking, adopted):
        assert counts.decode_tokens == TRUST_STEPS + 2
        for step in counts.steps[1:]:
            graph_calls = sum(n for name, n in step.ops.items() if name.startswith("jit:"))
            assert graph_calls == 1, f"{graph_calls} graph calls in a step: {step.ops.most_common(8)}"
    checked = checking.steps[1:TRUST_STEPS + 1]
    assert all(step.n_ops > 50 for step in checked)  # the step again in PyNative
    assert all(sum(step.graph_kernels.values()) > 50 for step in adopted.steps[1:])
    # the graph call and the EOS check; the last step also stacks the outputs, as generate ends
    assert all(step.n_ops <= 2 for step in adopted.steps[1:-1]) and adopted.decode_ops <= 5
    # a replay reads its tokens on the CPU (CompiledDecode.read_tokens) and nothing else (MindSpore's
    # trace wrapper would format every tensor it passes: _replay); the loop adds the EOS check where one falls
    token_reads = [sum(n for site, n in step.syncs.items() if "generation_compiled" in site)
                   for step in adopted.steps[1:]]
    assert token_reads == [int(compiled_decode(tiny).read_tokens)] * len(token_reads), token_reads
    assert all(step.n_syncs <= token_reads[0] + 1 for step in adopted.steps[1:-1]), [dict(s.syncs) for s in adopted.steps]


def test_untraced_tensor_calls_are_refused_inside_the_step_only():
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
