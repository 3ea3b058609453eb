"""The compiled decode step and prefill (mindnlp.accel.generation.decode_graph, prefill_graph) against
our PyNative path.

On every family's tiny fixture (and the mixed ones of the MoE families: GQA, dense layers, other
expert counts) the graphs must give PyNative's greedy tokens and logits within COMPILED_RTOL of each
step's largest |logit|: the decode step attends over the whole cache under a mask where PyNative
reads the filled prefix, the prefill runs the prompt right-padded to its bucket, and the longer
reductions may sum in another order. Every bucket compiles on the first prompt, none later.
"""
import contextlib
import logging
import warnings

import numpy as np
import pytest

import mindspore
from mindnlp.transformers import AutoModelForCausalLM

import counters
import fixtures
from greedy_checks import FIXTURES, GREEDY, assert_same_generation, ids_of
from mindnlp.accel.generation.decode_graph import TRUST_STEPS, compiled_decode
from mindnlp.accel.generation.prefill_graph import BUCKETS_ENV, compiled_prefill
from mindnlp.accel.graphs import JIT_ENV

COMPILED_RTOL = 1e-5
PROMPTS = ([5, 17, 99, 3], [8, 9, 10, 11, 12, 13, 14, 15, 16])  # buckets 8 and 16
BUCKETS = "8,16"


def load(family, size):
    path = fixtures.ensure(family, size, FIXTURES)
    if family == "qwen2_vl":
        from mindnlp.transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration.from_pretrained(path).set_train(False)
    return AutoModelForCausalLM.from_pretrained(path).set_train(False)


def fresh_graphs(model):
    """Forget the model's graphs and verdicts (a new process would start so)."""
    model.__dict__.pop("_compiled_decode", None)
    model.__dict__.pop("_compiled_prefill", None)
    model._cache = None


def generate(model, monkeypatch, jit, prompt, **kwargs):
    """model.generate with the graphs on or off, from fresh verdicts when `jit` changes."""
    monkeypatch.setenv(JIT_ENV, "1" if jit else "0")
    monkeypatch.setenv(BUCKETS_ENV, BUCKETS)
    verdict = compiled_decode(model).verdict
    if (verdict is not None and verdict.startswith("disabled")) == jit:
        fresh_graphs(model)
    kwargs.setdefault("max_new_tokens", 12)
    return model.generate(input_ids=ids_of(*prompt) if isinstance(prompt[0], list) else ids_of(prompt),
                          **GREEDY, **kwargs)


@pytest.mark.parametrize("family,size", [("qwen2_moe", "tiny"), ("qwen2_moe", "mixed"), ("deepseek", "tiny"),
                                         ("deepseek", "mixed"), ("llama", "tiny"), ("qwen2_vl", "tiny")])
def test_graphs_equal_pynative_across_prompts_and_compile_on_the_first_call_only(family, size, monkeypatch):
    model = load(family, size)
    expected = [generate(model, monkeypatch, False, prompt) for prompt in PROMPTS]
    fresh_graphs(model)
    compiles_after_first = None
    for _ in range(2):  # the first call decides, the second runs compiled
        for prompt, want in zip(PROMPTS, expected):
            assert_same_generation(want, generate(model, monkeypatch, True, prompt), COMPILED_RTOL)
            if compiles_after_first is None:
                compiles_after_first = compiled_prefill(model).compiles
    prefill, decode = compiled_prefill(model), compiled_decode(model)
    assert prefill.verdict == decode.verdict == "adopted"
    # every bucket on the first prompt (the second prompt's, 16, before the first's own); none later
    assert compiles_after_first == prefill.compiles == 2
    assert decode.compiles == 1


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen2_vl"])
def test_a_first_prompt_one_bucket_longer_than_the_next_leaves_it_no_compile(family, monkeypatch):
    model = load(family, "tiny")
    long_prompt, short = PROMPTS[1], PROMPTS[0]  # buckets 16 and 8
    expected = [generate(model, monkeypatch, False, prompt) for prompt in (long_prompt, short)]
    fresh_graphs(model)
    got = [generate(model, monkeypatch, True, long_prompt)]
    assert compiled_prefill(model).compiles == 2  # its own bucket, and the one below on a prefix of 5 positions
    got.append(generate(model, monkeypatch, True, short))
    assert compiled_prefill(model).compiles == 2 and compiled_prefill(model).verdict == "adopted"
    for want, have in zip(expected, got):
        assert_same_generation(want, have, COMPILED_RTOL)


def test_the_bucket_below_runs_on_a_prefix_of_embeddings_too(monkeypatch):
    model = load("llama", "tiny")
    embeds = [model.get_input_embeddings()(ids_of(prompt)) for prompt in (PROMPTS[1], PROMPTS[0])]
    monkeypatch.setenv(BUCKETS_ENV, BUCKETS)
    calls = []
    for jit in (False, True):
        monkeypatch.setenv(JIT_ENV, "1" if jit else "0")
        fresh_graphs(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a bucket refused would warn
            calls.append([model.generate(inputs_embeds=e, max_new_tokens=6, **GREEDY) for e in embeds])
        if jit:
            assert compiled_prefill(model).compiles == 2 and compiled_prefill(model).verdict == "adopted"
    for want, got in zip(*calls):
        assert_same_generation(want, got, COMPILED_RTOL)


def test_a_padded_batch_and_a_repetition_penalty_compile_their_own_graphs(monkeypatch):
    model = load("qwen2_moe", "tiny")
    prompt = [[0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26]]
    options = dict(attention_mask=ids_of([0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]), pad_token_id=0)
    plain = generate(model, monkeypatch, False, prompt, **options)
    penalised = generate(model, monkeypatch, False, prompt, repetition_penalty=1.3, **options)
    fresh_graphs(model)
    for _ in range(2):
        assert_same_generation(plain, generate(model, monkeypatch, True, prompt, **options), COMPILED_RTOL)
        got = generate(model, monkeypatch, True, prompt, repetition_penalty=1.3, **options)
        assert_same_generation(penalised, got, COMPILED_RTOL)
    assert compiled_decode(model).verdict == compiled_prefill(model).verdict == "adopted"
    # one graph per step layout: with and without the penalty; batch 2 compiles the bucket it needs only
    assert compiled_decode(model).compiles == 2 and compiled_prefill(model).compiles == 2


@pytest.fixture(scope="module")
def tiny():
    return load("qwen2_moe", "tiny")


class Messages(logging.Handler):
    """What the "mindnlp.accel" logger says at INFO while it is attached."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def said_at_info():
    """The Messages of the "mindnlp.accel" logger at INFO within the block."""
    logger, said = logging.getLogger("mindnlp.accel"), Messages()
    level = logger.level
    logger.addHandler(said)
    logger.setLevel(logging.INFO)
    try:
        yield said
    finally:
        logger.removeHandler(said)
        logger.setLevel(level)


def test_a_prompt_longer_than_every_bucket_prefills_in_pynative_with_an_info_line(tiny, monkeypatch):
    long_prompt = list(range(5, 25))  # 20 positions, over the largest bucket (16)
    expected = generate(tiny, monkeypatch, False, long_prompt)
    fresh_graphs(tiny)
    with said_at_info() as said:
        got = generate(tiny, monkeypatch, True, long_prompt)
    assert_same_generation(expected, got, COMPILED_RTOL)
    np.testing.assert_array_equal(got.logits[0].asnumpy(), expected.logits[0].asnumpy())  # PyNative's prefill
    assert compiled_prefill(tiny).compiles == 0
    assert sum("longer than the largest prefill bucket" in line for line in said.lines) == 1


def test_the_models_bucket_limit_keeps_longer_prompts_in_pynative_and_larger_buckets_uncompiled(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "greedy_prefill_bucket_limit", 8)
    short, long_prompt = PROMPTS  # buckets 8 and 16; 16 is over the limit
    expected = [generate(tiny, monkeypatch, False, prompt) for prompt in (long_prompt, short)]
    fresh_graphs(tiny)
    with said_at_info() as said:
        got_long = generate(tiny, monkeypatch, True, long_prompt)
    assert compiled_prefill(tiny).compiles == 0
    assert sum("longer than the largest prefill bucket" in line for line in said.lines) == 1
    got_short = generate(tiny, monkeypatch, True, short)
    assert compiled_prefill(tiny).compiles == 1  # bucket 8 alone, though it is this cache's first graph
    for want, got in zip(expected, (got_long, got_short)):
        assert_same_generation(want, got, COMPILED_RTOL)


def test_a_prefill_is_a_few_host_dispatches_in_the_counts(tiny, monkeypatch):
    """Once its bucket is trusted, the judge's prefill call (generate with one new token) runs the
    prompt as one graph call; eval/counters.py counts it as one launch, and its kernels apart."""
    monkeypatch.setenv(JIT_ENV, "1")
    monkeypatch.setenv(BUCKETS_ENV, BUCKETS)
    fresh_graphs(tiny)
    kwargs = dict(input_ids=ids_of(PROMPTS[1]), attention_mask=ids_of([1] * len(PROMPTS[1])), max_new_tokens=1,
                  **GREEDY)  # the tokenizer's mask, as the judge passes it
    first = counters.count_generate(tiny, kwargs)
    later = counters.count_generate(tiny, kwargs)
    graph_calls = {name: n for name, n in later.steps[0].ops.items() if name.startswith("jit:")}
    assert list(graph_calls.values()) == [1] and "prefill" in next(iter(graph_calls)), later.steps[0].ops
    assert sum(later.steps[0].graph_kernels.values()) > 50
    assert later.prefill_ops <= 16, later.steps[0].ops.most_common()
    assert later.prefill_syncs <= first.prefill_syncs
    assert len(first.steps) == len(later.steps) == 1  # the trust runs of the first call stay in its one step


def test_a_compiled_decode_step_is_one_host_dispatch_in_the_counts(tiny, monkeypatch):
    """eval/counters.py reads a graph call as one launch and a decode step's graph call as one step,
    also while the first steps run both ways; once adopted, a decode token costs the graph call (and
    the EOS check where one falls)."""
    monkeypatch.setenv(JIT_ENV, "1")
    monkeypatch.setenv(BUCKETS_ENV, BUCKETS)
    fresh_graphs(tiny)
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
    # on the CPU a replay reads its smallest output (graphs.capture) and nothing else (MindSpore's
    # trace wrapper would format every tensor it passes); the loop adds the EOS check where one falls
    reads = [sum(n for site, n in step.syncs.items() if "graphs/capture" in site) for step in adopted.steps[1:]]
    assert reads == [1] * len(reads), reads
    assert all(step.n_syncs <= 2 for step in adopted.steps[1:-1]), [dict(s.syncs) for s in adopted.steps]
