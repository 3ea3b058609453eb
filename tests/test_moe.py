"""SparseMoe against stock's Qwen2MoeSparseMoeBlock, a float64 NumPy reference, and itself."""
import functools
from contextlib import contextmanager

import numpy as np
import pytest
import mindspore
from mindspore import Tensor

from mindnlp.transformers import Qwen2MoeConfig
from mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeMLP, Qwen2MoeSparseMoeBlock

from greedy_checks import assert_moe_prefill_matches, matmul_rows_depend_on_count
from mindnlp.accel.layers import moe as moe_module, moe_router
from mindnlp.accel.layers.moe import SparseMoe
from mindnlp.accel.layers.moe_experts import (GatedMLP, dense_outputs, gathered_outputs, grouped_mm_twin,
                                             grouped_outputs)
from mindnlp.accel.layers.moe_router import RouterConfig, route
from mindnlp.accel.loading import hf_state_dict
from mindnlp.accel.models.qwen2_moe import sparse_moe

HIDDEN, INTER, SHARED, EXPERTS = 32, 16, 24, 8


def qwen_config(top_k=2, norm_topk_prob=False):
    return Qwen2MoeConfig(hidden_size=HIDDEN, num_experts=EXPERTS, num_experts_per_tok=top_k,
                          moe_intermediate_size=INTER, shared_expert_intermediate_size=SHARED,
                          norm_topk_prob=norm_topk_prob)


def stock_and_ours(config, dtype=mindspore.float32, state=None):
    """Stock block (random init unless `state` is given) and ours loaded with the same weights."""
    stock = Qwen2MoeSparseMoeBlock(config)
    if dtype == mindspore.float16:
        stock.half()
    if state is not None:
        stock.load_state_dict({k: Tensor(v, dtype) for k, v in state.items()})
    ours = sparse_moe(config, dtype=dtype)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def random_hidden(shape, seed, dtype=mindspore.float32):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), dtype)


def assert_bits_equal(got, want, err_msg=""):
    """Equal dtypes, shapes and bit patterns (stricter than assert_array_equal: +0 and -0 differ)."""
    assert got.dtype == want.dtype and got.shape == want.shape, err_msg
    bits = {2: np.uint16, 4: np.uint32}[got.itemsize]
    np.testing.assert_array_equal(got.view(bits), want.view(bits), err_msg=err_msg)


# ---- float64 NumPy reference, written from the models' definitions ----

def _silu(z):
    return z / (1.0 + np.exp(-z))


def _mlp(x, state, prefix):
    gate = x @ state[prefix + "gate_proj.weight"].T
    up = x @ state[prefix + "up_proj.weight"].T
    return (_silu(gate) * up) @ state[prefix + "down_proj.weight"].T


def numpy_moe(x, state, top_k, norm_topk_prob, shared_name, shared_gated, norm_eps=0.0):
    """x [T, H] float64; `state` in checkpoint names (float64)."""
    logits = x @ state["gate.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    chosen = np.argsort(-probs, axis=-1)[:, :top_k]
    weights = np.take_along_axis(probs, chosen, -1)
    if norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdims=True) + norm_eps)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for slot in range(top_k):
            out[t] += weights[t, slot] * _mlp(x[t:t + 1], state, f"experts.{chosen[t, slot]}.")[0]
    if shared_name:
        shared = _mlp(x, state, shared_name + ".")
        if shared_gated:
            shared = shared / (1.0 + np.exp(-(x @ state["shared_expert_gate.weight"].T)))
        out += shared
    return out


# Against the float64 reference our fp32 matmuls, softmax and sums round: outputs here are below
# 0.6 in magnitude and differ by at most 3.7e-7, a few fp32 ulps (measured over 60 weight seeds).
F64_ATOL = 5e-7


def float64_state(module):
    """A module's parameters in checkpoint names, as float64 arrays."""
    return {k: v.asnumpy().astype(np.float64) for k, v in hf_state_dict(module).items()}


# ---- tests ----

@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_matches_stock_qwen_block_fp32(tokens, norm_topk_prob):
    stock, ours = stock_and_ours(qwen_config(norm_topk_prob=norm_topk_prob))
    x = random_hidden((2, tokens, HIDDEN), seed=tokens)
    expected, _ = stock(x)
    got = ours(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert_moe_prefill_matches(got.asnumpy(), expected.asnumpy())


@pytest.mark.parametrize("tokens", [1, 17])
def test_matches_float64_reference_qwen(tokens):
    mindspore.set_seed(0)  # fixed weights: the bound below is measured on this data
    _, ours = stock_and_ours(qwen_config(top_k=4, norm_topk_prob=True))
    x = random_hidden((tokens, HIDDEN), seed=5)
    expected = numpy_moe(x.asnumpy().astype(np.float64), float64_state(ours), top_k=4,
                         norm_topk_prob=True, shared_name="shared_expert", shared_gated=True)
    np.testing.assert_allclose(ours(x).asnumpy(), expected, rtol=0, atol=F64_ATOL)


def deepseek_moe(norm_topk_prob, top_k=3, n_shared=2):
    """DeepseekMoE's policy: softmax in the hidden dtype, unsorted topk, renormalised (+1e-20) only
    for k > 1 with norm_topk_prob, n_shared experts as one ungated MLP."""
    router = RouterConfig(EXPERTS, top_k, softmax_dtype=None, norm_topk_prob=bool(norm_topk_prob and top_k > 1),
                          norm_eps=1e-20, topk_sorted=False)
    return SparseMoe(HIDDEN, INTER, router, shared_intermediate_size=INTER * n_shared, shared_name="shared_experts")


@pytest.mark.parametrize("norm_topk_prob", [False, True])
@pytest.mark.parametrize("tokens", [1, 9])
def test_deepseek_configuration_matches_float64_reference(tokens, norm_topk_prob):
    mindspore.set_seed(0)  # fixed weights: the bound below is measured on this data
    ours = deepseek_moe(norm_topk_prob)
    names = set(hf_state_dict(ours))
    assert {"gate.weight", "shared_experts.gate_proj.weight", "shared_experts.up_proj.weight"} <= names
    assert "shared_expert_gate.weight" not in names
    assert ours.shared_experts.down_proj.weight.shape == (HIDDEN, 2 * INTER)
    x = random_hidden((tokens, HIDDEN), seed=11)
    expected = numpy_moe(x.asnumpy().astype(np.float64), float64_state(ours), top_k=3,
                         norm_topk_prob=norm_topk_prob, shared_name="shared_experts",
                         shared_gated=False, norm_eps=1e-20)
    np.testing.assert_allclose(ours(x).asnumpy(), expected, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
@pytest.mark.parametrize("shape", [(1, HIDDEN), (1, 1, HIDDEN), (17, HIDDEN), (2, 5, HIDDEN)])
def test_gated_mlp_is_bitwise_stock_mlp(shape, dtype):
    """The shared expert / dense MLP against stock's, for single tokens (gate and up fused where
    checked exact) and several (per block); the load after a forward must refresh the CPU
    transposed copies, and saving gives back stock's tensors."""
    mindspore.set_seed(0)
    stock = Qwen2MoeMLP(qwen_config(), intermediate_size=SHARED)
    if dtype == mindspore.float16:
        stock.half()
    ours = GatedMLP(HIDDEN, SHARED, dtype=dtype)
    x = random_hidden(shape, seed=3, dtype=dtype)
    ours(x)
    ours.load_state_dict(stock.state_dict())
    got, expected = ours(x), stock(x)
    assert got.dtype == expected.dtype
    assert_bits_equal(got.asnumpy(), expected.asnumpy())
    saved = hf_state_dict(ours)
    assert set(saved) == set(stock.state_dict())
    for name, tensor in stock.state_dict().items():
        assert_bits_equal(saved[name].asnumpy(), tensor.asnumpy(), err_msg=name)


def test_router_rejects_bad_top_k():
    with pytest.raises(ValueError, match="top_k"):
        RouterConfig(num_experts=4, top_k=5)


def test_router_returns_experts_ascending_with_their_weights():
    mindspore.set_seed(0)
    _, ours = stock_and_ours(qwen_config(top_k=4))
    x = random_hidden((9, HIDDEN), seed=2)
    routing = route(ours.router_logits(x), ours.router, x.dtype)
    experts = routing.experts.asnumpy()
    ascending = np.take_along_axis(experts, routing.order.asnumpy(), -1)
    assert (np.diff(ascending, axis=-1) > 0).all()
    logits = ours.router_logits(x).asnumpy().astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    # an fp32 softmax against a float64 one: relative error below 2.8e-6 (measured over 60 weight seeds)
    np.testing.assert_allclose(routing.weights.asnumpy(), np.take_along_axis(probs, experts, -1), rtol=5e-6, atol=0)
    top4 = np.sort(np.argsort(-probs, -1)[:, :4], -1)
    np.testing.assert_array_equal(ascending, top4)


@pytest.mark.parametrize("tokens", [1, 3, 17])
def test_decode_gather_equals_prefill_paths(tokens):
    _, ours = stock_and_ours(qwen_config(top_k=4))
    x = random_hidden((tokens, HIDDEN), seed=3)
    experts = route(ours.router_logits(x), ours.router, x.dtype).experts
    dense = dense_outputs(ours.experts, x, experts).asnumpy()
    assert dense.shape == (tokens, 4, HIDDEN)
    # one row per expert call (gathered, grouped twin) against all tokens per expert call (dense)
    assert_moe_prefill_matches(gathered_outputs(ours.experts, x, experts).asnumpy(), dense)
    grouped = grouped_outputs(ours.experts, x, experts, grouped_mm=grouped_mm_twin).asnumpy()
    assert_moe_prefill_matches(grouped, dense)


@pytest.mark.parametrize("tokens, budget, path", [(1, None, "gathered"), (3, None, "gathered"), (17, None, "gathered"),
                                                  (1, 0, "gathered"), (3, 0, "dense"), (17, 0, "dense")])
def test_forward_gathers_below_one_row_per_expert_or_within_the_budget(tokens, budget, path, monkeypatch):
    """Fewer rows than experts always gather; more gather only while the weight copies fit the
    budget (12 and 68 rows of 4.6 KiB fit the default; none fits a budget of 0)."""
    _, ours = stock_and_ours(qwen_config(top_k=4))
    if budget is not None:
        monkeypatch.setattr(moe_module, "GATHER_BUDGET_BYTES", budget)
    used = []
    for name, real in (("gathered", gathered_outputs), ("dense", dense_outputs)):
        monkeypatch.setattr(moe_module, f"{name}_outputs",
                            lambda *args, name=name, real=real: used.append(name) or real(*args))
    moe_module.device.reset_choices()
    ours(random_hidden((tokens, HIDDEN), seed=4))
    assert used == [path]


def test_bytes_per_expert_counts_gate_up_and_down_as_stored():
    _, ours = stock_and_ours(qwen_config(top_k=4), mindspore.float16)
    assert ours.experts.bytes_per_expert() == 3 * HIDDEN * INTER * 2


def test_prefill_uses_dense_twin_off_ascend():
    moe_module.device.reset_choices()
    assert moe_module.choose_prefill_kernel(mindspore.float32) is dense_outputs


def test_grouped_kernel_passes_its_self_check_and_then_serves_prefill(monkeypatch):
    """The device self-check wiring, run on CPU with the grouped kernel's twin in its place. Where this
    CPU rounds a matmul row by the call's row count, the twin (one row per call) is not bit-identical
    to the dense path it is checked against, so the test admits it within tolerance."""
    grouped_twin = functools.partial(grouped_outputs, grouped_mm=grouped_mm_twin)
    monkeypatch.setattr(moe_module, "grouped_outputs", grouped_twin)
    if matmul_rows_depend_on_count():
        monkeypatch.setenv(moe_module.device.INEXACT_ENV, "1")
    monkeypatch.setattr(moe_module.device, "fused_enabled", lambda: True)
    moe_module.device.reset_choices()
    try:
        stock, ours = stock_and_ours(qwen_config(top_k=4))
        x = random_hidden((2, 9, HIDDEN), seed=8)
        ours.prepare_kernels(mindspore.float32, 2)
        got = ours(x)
        assert ours._prefill[mindspore.float32] is grouped_twin
    finally:
        moe_module.device.reset_choices()
    assert_moe_prefill_matches(got.asnumpy(), stock(x)[0].asnumpy())


@pytest.mark.parametrize("inexact", [False, True])
def test_grouped_kernel_off_by_last_bits_is_opt_in(monkeypatch, inexact):
    """A grouped kernel that sums in another order (here: the twin nudged by one part in 1e7) is
    refused by default, with a warning naming the switch, and adopted only with
    MINDNLP_ACCEL_INEXACT=1: a kernel that changes the bits must never be used silently."""
    grouped_twin = functools.partial(grouped_outputs, grouped_mm=grouped_mm_twin)
    nudged = lambda *args: grouped_twin(*args) * (1.0 + 1e-7)  # noqa: E731
    monkeypatch.setattr(moe_module, "grouped_outputs", nudged)
    monkeypatch.setattr(moe_module.device, "fused_enabled", lambda: True)
    if inexact:
        monkeypatch.setenv(moe_module.device.INEXACT_ENV, "1")
    moe_module.device.reset_choices()
    try:
        if inexact:
            assert moe_module.choose_prefill_kernel(mindspore.float32) is nudged
        else:
            with pytest.warns(RuntimeWarning, match=moe_module.device.INEXACT_ENV):
                assert moe_module.choose_prefill_kernel(mindspore.float32) is dense_outputs
    finally:
        moe_module.device.reset_choices()


def test_self_check_inputs_route_each_token_to_two_distinct_ascending_experts():
    experts, x, ids = moe_module._check_inputs(mindspore.float32)
    ids = ids.asnumpy()
    assert ids.shape == (8, 2) and (np.diff(ids, axis=1) > 0).all() and ids.max() < experts.num_experts
    # an expert no token chose, as in most prefills: a kernel that refuses an empty group fails the check
    assert 0 in np.bincount(ids.reshape(-1), minlength=experts.num_experts)
    dense = dense_outputs(experts, x, Tensor(ids))
    assert np.isfinite(dense.asnumpy()).all() and np.abs(dense.asnumpy()).max() > 0.1


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
@pytest.mark.parametrize("tokens", [1, 5])
def test_running_sum_combine_is_bitwise_the_adds(dtype, tokens):
    rng = np.random.default_rng(tokens)
    weighted = Tensor(rng.standard_normal((tokens, 6, HIDDEN)) * np.exp(2 * rng.standard_normal((tokens, 6, 1))), dtype)
    order = Tensor(np.argsort(rng.standard_normal((tokens, 6)), -1).astype(np.int32))
    adds = moe_module.combine_in_expert_order(weighted, order).asnumpy()
    running = moe_module.combine_in_expert_order(weighted, order, running_sum=True).asnumpy()
    assert_bits_equal(running, adds)
    assert moe_module.running_sum_is_exact(dtype, 6, HIDDEN, tokens)


def test_running_sum_that_rounds_once_is_refused(monkeypatch):
    """A cumsum accumulating fp16 in float32 (rounding each partial sum once, from the wide total)
    gives other bits in some sums: the check must refuse it, and SparseMoe then keeps the Adds."""
    def wide_cumsum(x, axis):
        return moe_module.ops.cumsum(x.to(mindspore.float32), axis).to(x.dtype)

    monkeypatch.setattr(moe_module, "cumsum", wide_cumsum)
    monkeypatch.setattr(moe_module, "_RUNNING_SUM_EXACT", {})
    assert not moe_module.running_sum_is_exact(mindspore.float16, 6, HIDDEN, 1)
    _, ours = stock_and_ours(qwen_config(top_k=4), mindspore.float16)
    ours.prepare_kernels(mindspore.float16, 1)
    assert ours._running_sum[mindspore.float16] is False


def test_prepared_block_uses_the_running_sum_and_int_keys_here():
    """On this CPU both checks pass (the launch counts of tests/test_deepseek.py rely on it)."""
    _, ours = stock_and_ours(qwen_config(top_k=4))
    ours.prepare_kernels(mindspore.float32, 1)
    assert ours._running_sum[mindspore.float32] is True and ours._int_sort_keys is True


def test_int_keys_order_the_slots_as_float_keys():
    router = RouterConfig(EXPERTS, 3)
    logits = random_hidden((11, EXPERTS), seed=12)
    by_float, by_int = route(logits, router, mindspore.float32), route(logits, router, mindspore.float32, int_keys=True)
    np.testing.assert_array_equal(by_int.order.asnumpy(), by_float.order.asnumpy())
    ascending = np.take_along_axis(by_int.experts.asnumpy(), by_int.order.asnumpy(), -1)
    assert (np.diff(ascending, axis=-1) > 0).all()


FLOAT_KEYS = (mindspore.float16, mindspore.float32)


@pytest.mark.parametrize("int_sort", ["raises", "descends"])
def test_int_keys_refused_where_sort_does_not_order_ints(int_sort, monkeypatch):
    real = moe_router.sort_last

    def sort(keys):
        if keys.dtype in FLOAT_KEYS:
            return real(keys)
        if int_sort == "raises":
            raise TypeError("Sort takes float keys")
        return real(-keys)

    monkeypatch.setattr(moe_router, "sort_last", sort)
    monkeypatch.setattr(moe_router, "_INT_KEYS_EXACT", {})
    assert moe_router.int_sort_keys_exact(RouterConfig(EXPERTS, 2)) is False


# ---- fp16: the order and dtype of the expert sum ----

def exact_state(rng):
    """Weights under which every expert matmul is exact in fp16, so stock and ours can differ
    only in how they add the expert outputs: small-integer inputs, gate/up weights in
    {-1/4, 0, 1/4}, and down weights with one power of two per output row."""
    state = {"gate.weight": rng.standard_normal((EXPERTS, HIDDEN)) * 0.3,
             "shared_expert_gate.weight": rng.standard_normal((1, HIDDEN)) * 0.1}

    def mlp(prefix, inter):
        state[prefix + "gate_proj.weight"] = rng.integers(-1, 2, (inter, HIDDEN)) / 4
        state[prefix + "up_proj.weight"] = rng.integers(-1, 2, (inter, HIDDEN)) / 4
        down = np.zeros((HIDDEN, inter))
        down[np.arange(HIDDEN), rng.integers(0, inter, HIDDEN)] = 2.0 ** -rng.integers(0, 4, HIDDEN)
        state[prefix + "down_proj.weight"] = down

    for j in range(EXPERTS):
        mlp(f"experts.{j}.", INTER)
    mlp("shared_expert.", SHARED)
    return state


@pytest.mark.parametrize("prepared", [False, True])  # the Adds and float keys; the running sum and int keys
@pytest.mark.parametrize("batch, tokens", [(1, 1), (2, 17)])  # 4 rows < 8 experts, 136 rows gathered
def test_fp16_sum_is_bitwise_stock(batch, tokens, prepared):
    rng = np.random.default_rng(0)
    stock, ours = stock_and_ours(qwen_config(top_k=4), mindspore.float16, exact_state(rng))
    if prepared:
        ours.prepare_kernels(mindspore.float16, batch)
    x = Tensor(rng.integers(-3, 4, (batch, tokens, HIDDEN)), mindspore.float16)
    expected, _ = stock(x)
    got = ours(x)
    assert got.dtype == mindspore.float16
    assert_bits_equal(got.asnumpy(), expected.asnumpy())


def _fp16_sum(parts):
    """Left-to-right sum of fp16 arrays, rounding to fp16 after each add."""
    total = parts[0]
    for part in parts[1:]:
        total = (total + part).astype(np.float16)
    return total


def test_fp16_sum_order_is_what_the_bitwise_test_sees():
    """On this data the order and the dtype of the sum show in the bits: stock's result is the
    left-to-right fp16 sum in ascending expert index, and neither the reverse order nor a
    float32 sum gives it."""
    rng = np.random.default_rng(0)
    state = exact_state(rng)
    state["shared_expert.down_proj.weight"][:] = 0  # shared expert adds exactly 0: routed sum only
    stock, ours = stock_and_ours(qwen_config(top_k=4), mindspore.float16, state)
    x = Tensor(rng.integers(-3, 4, (17, HIDDEN)), mindspore.float16)
    expected = stock(x[None])[0][0].asnumpy()
    routing = route(ours.router_logits(x), ours.router, x.dtype)
    weighted = (dense_outputs(ours.experts, x, routing.experts) * routing.weights[:, :, None]).asnumpy()
    weighted = np.take_along_axis(weighted, routing.order.asnumpy()[:, :, None], 1)  # ascending expert
    parts = [weighted[:, s] for s in range(4)]
    assert np.array_equal(_fp16_sum(parts), expected)
    assert not np.array_equal(_fp16_sum(parts[::-1]), expected)
    assert not np.array_equal(weighted.astype(np.float32).sum(1).astype(np.float16), expected)


# ---- no host syncs in forward ----

@contextmanager
def host_reads_forbidden():
    """Every Tensor -> host read, and the data-dependent-shape ops, raise inside this block."""
    def fail(*_args, **_kwargs):
        raise AssertionError("host sync in forward")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("asnumpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__",
                     "__array__"):
            patch.setattr(mindspore.Tensor, name, fail)
        for module in (mindspore.ops, mindspore.mint):
            patch.setattr(module, "nonzero", fail)
            patch.setattr(module, "masked_select", fail)
        for primitive in (mindspore.ops.NonZero, mindspore.ops.MaskedSelect, mindspore.ops.Unique):
            patch.setattr(primitive, "__call__", fail)
        yield


@pytest.mark.parametrize("shape", [(1, 1, HIDDEN), (2, 17, HIDDEN)])  # gathered, dense
def test_forward_makes_no_host_sync(shape):
    _, ours = stock_and_ours(qwen_config(top_k=4))
    x = random_hidden(shape, seed=6)
    moe_module.device.reset_choices()
    with host_reads_forbidden():
        out = ours(x)
    assert out.shape == shape


def test_sync_guard_catches_stock():
    stock, _ = stock_and_ours(qwen_config())
    x = random_hidden((1, 3, HIDDEN), seed=6)
    with host_reads_forbidden(), pytest.raises(AssertionError, match="host sync"):
        stock(x)
