"""Helpers the per-model equality tests share: prompts as tensors, a generate call that must be served
by our fast path, comparison of two generations (bit for bit, or within a stated bound), launches
per decoder layer, and a probe of this CPU's matmul."""
import functools
import os

import numpy as np
import pytest

import mindspore

import counters

GREEDY = dict(do_sample=False, return_dict_in_generate=True, output_logits=True)
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval_cache", "fixtures")


def model_fixtures(family, stock_class):
    """Module-scoped pytest fixtures (fixture_path, stock, ours) over the family's tiny and mixed
    fixtures: `stock_class` from_pretrained, and whatever AutoModelForCausalLM builds (ours)."""
    import fixtures
    from mindnlp.transformers import AutoModelForCausalLM

    @pytest.fixture(scope="module", params=["tiny", "mixed"])
    def fixture_path(request):
        return fixtures.ensure(family, request.param, FIXTURES)

    @pytest.fixture(scope="module")
    def stock(fixture_path):  # pylint: disable=redefined-outer-name
        return stock_class.from_pretrained(fixture_path).set_train(False)

    @pytest.fixture(scope="module")
    def ours(fixture_path):  # pylint: disable=redefined-outer-name
        return AutoModelForCausalLM.from_pretrained(fixture_path).set_train(False)

    return fixture_path, stock, ours


def ids_of(*rows):
    return mindspore.Tensor(np.array(rows, dtype=np.int64))


def fast_generate(model, ours_class, calls, **kwargs):
    """model.generate(**kwargs), asserting that `model` is an `ours_class` and that its fast path served
    the call (stock's generate, spied on by conftest's `stock_generate_calls`, never ran)."""
    assert isinstance(model, ours_class)
    before = len(calls)
    out = model.generate(**kwargs)
    assert len(calls) == before, "stock generate ran instead of the fast path"
    return out


def assert_same_generation(a, b, bound=None):
    """Same tokens and, at every step, bit-identical logits, or with `bound` logits within
    bound * (largest |logit| of the step)."""
    assert a.sequences.asnumpy().tolist() == b.sequences.asnumpy().tolist()
    assert len(a.logits) == len(b.logits)
    for step, (x, y) in enumerate(zip(a.logits, b.logits)):
        x, y = x.asnumpy(), y.asnumpy()
        if bound is None:
            np.testing.assert_array_equal(x, y, err_msg=f"step {step}")
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=bound * np.abs(y).max(), err_msg=f"step {step}")


@functools.lru_cache(maxsize=None)
def matmul_rows_depend_on_count() -> bool:
    """Whether this CPU's MatMul gives a row other bits depending on how many rows the call has.

    On the AVX2 EPYC hosts of 2026-12 it does: rows are computed in tiles of 6, and a last tile of
    1 to 3 rows goes through another micro-kernel that sums in another order (found with a probe
    of 1..80 rows; an earlier host gave equal rows at every count the tests use). Stock's MoE
    runs each expert over exactly its own tokens, a row count only the data knows; the dense
    prefill twin runs every expert over all tokens. Where this holds, a prefill through the MoE
    is not bit-identical to stock's without stock's per-expert host syncs, and tests bound it.
    """
    rng = np.random.default_rng(0)
    x = mindspore.Tensor(rng.standard_normal((24, 64)).astype(np.float32))
    w = mindspore.Tensor(rng.standard_normal((64, 128)).astype(np.float32))
    full = mindspore.ops.matmul(x, w).asnumpy()
    return any(not np.array_equal(mindspore.ops.matmul(x[:rows], w).asnumpy(), full[:rows]) for rows in range(1, 13))


def expert_sum_launches(top_k):
    """Launches of a sparse layer's sum over its k expert outputs: k - 1 Adds, or one running sum
    (CumSum) for k > 2 where it checked exact (it does on this CPU: tests/test_moe.py)."""
    return top_k - 1 if top_k <= 2 else 1


def launches_per_layer(model, generate_kwargs):
    """Launches of each decoder layer in the last forward of one generate call."""
    layers = model.model.layers
    with counters.count_region() as region:
        for layer in layers:
            def marked(*args, _forward=layer.forward, **kwargs):
                region.mark()
                out = _forward(*args, **kwargs)
                region.mark()
                return out
            layer.forward = marked
        try:
            model.generate(**generate_kwargs)
        finally:
            for layer in layers:
                del layer.forward
    steps = region.counts.steps
    last = (len(steps) - 1) // (2 * len(layers)) - 1  # each forward adds 2 marks per layer
    return [sum(steps[2 * len(layers) * last + 2 * j + 1].ops.values()) for j in range(len(layers))]


# Measured on the AVX2 host over every prompt of test_qwen2_moe.py, both fixtures: at most 1.1e-6
# (fp32) and 1.0e-3 (fp16, about one unit in the last place of the largest logit) of the largest |logit|.
MOE_PREFILL_BOUND = {mindspore.float32: 5e-6, mindspore.float16: 4e-3}


def moe_prefill_bound(dtype=mindspore.float32):
    """None (bit for bit) where this CPU's matmul does not depend on the row count, else the bound a
    generation with a prefill through the MoE's dense twin is held to."""
    return MOE_PREFILL_BOUND[dtype] if matmul_rows_depend_on_count() else None


def assert_moe_prefill_matches(got, want, dtype=mindspore.float32):
    """Arrays through the MoE's prefill twin: equal bit patterns where this CPU allows it (see
    matmul_rows_depend_on_count), else within moe_prefill_bound(dtype) of the largest |want|."""
    bound = moe_prefill_bound(dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    if bound is None:
        bits = {2: np.uint16, 4: np.uint32}[got.itemsize]
        np.testing.assert_array_equal(got.view(bits), want.view(bits))
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=bound * np.abs(want).max())
