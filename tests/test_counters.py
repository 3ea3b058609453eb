"""Operator-launch and host-sync counters on known code and small stock models."""
import collections
import inspect

import numpy as np
import pytest

import mindspore
from mindspore import Tensor, ops

import counters


def _here():
    """This test file's site label for the caller's current line."""
    frame = inspect.currentframe().f_back
    return f"{counters.short_path(frame.f_code.co_filename)}:{frame.f_lineno + 1}"


@pytest.fixture(scope="module")
def x():
    return Tensor(np.arange(1, 17, dtype=np.float32).reshape(4, 4))


def test_parse_launch_record_normalizes_names_and_orders_by_time():
    text = (
        "Default/Cast-op2;HostCpuOps;30,0.1,0 10,0.1,0 \n"
        "Expand/_SumExt/ReduceSum-op0;HostCpuOps;20,0.2,0 \n"
        "NonZero;HostCpuOps;40,0.3,0 \n"
    )
    assert counters.parse_launch_record(text) == [
        (10, "Cast"), (20, "ReduceSum"), (30, "Cast"), (40, "NonZero")
    ]


def test_parse_launch_record_rejects_unknown_format():
    with pytest.raises(ValueError, match="unexpected profiler launch record"):
        counters.parse_launch_record("Add,10,0.1\n")


def test_region_with_k_known_ops_counts_k(x):
    with counters.count_region() as region:
        a = ops.add(x, x)
        b = ops.mul(a, x)
        ops.sub(b, a)
    step, = region.counts.steps
    assert step.ops == collections.Counter({"Add": 1, "Mul": 1, "Sub": 1})
    assert step.n_syncs == 0


def test_view_ops_launch_nothing(x):
    with counters.count_region() as region:
        x.reshape(16)
        x[1:3]
    assert region.counts.steps[0].n_ops == 0


def test_each_host_read_counts_once_at_its_caller(x):
    with counters.count_region() as region:
        site_asnumpy = _here()
        x.asnumpy()
        site_bool = _here()
        bool(x[0, 0] > 0)  # __bool__ reads through _item: one sync, not two
        site_float = _here()
        float(x[0, 0])
        site_array = _here()
        np.asarray(x)
    syncs = region.counts.steps[0].syncs
    assert syncs == collections.Counter({site_asnumpy: 1, site_bool: 1, site_float: 1, site_array: 1})


def test_data_dependent_shape_op_is_a_sync(x):
    with counters.count_region() as region:
        site = _here()
        ops.nonzero(x)
    step = region.counts.steps[0]
    assert step.ops["NonZero"] == 1
    assert step.syncs == collections.Counter({f"{site} [NonZero shape]": 1})


def test_mark_starts_a_new_step(x):
    with counters.count_region() as region:
        ops.add(x, x)
        region.mark()
        ops.mul(x, x)
        ops.mul(x, x)
        x.asnumpy()
    prefill, decode = region.counts.steps
    assert prefill.ops == collections.Counter({"Add": 1}) and prefill.n_syncs == 0
    assert decode.ops == collections.Counter({"Mul": 2}) and decode.n_syncs == 1
    assert region.counts.decode_ops == 2


def test_patches_are_removed_after_an_error(x):
    original = mindspore.Tensor.asnumpy
    with pytest.raises(KeyError):
        with counters.count_region():
            raise KeyError("boom")
    assert mindspore.Tensor.asnumpy is original


def test_jit_call_is_one_op_and_its_kernels_are_kept_apart(x):
    @mindspore.jit
    def fused(a):
        return ops.mul(ops.add(a, a), a)

    fused(x)  # compile outside the region
    with counters.count_region() as region:
        fused(x)
    step = region.counts.steps[0]
    assert step.ops == collections.Counter({f"jit:{fused.__wrapped__.__qualname__}": 1})
    assert step.graph_kernels == collections.Counter({"Add": 1, "Mul": 1})


def test_counting_refuses_asynchronous_dispatch(monkeypatch):
    class _Async:
        @staticmethod
        def get_instance():
            return _Async()

        def is_launch_blocking(self):
            return False

    monkeypatch.setattr(counters, "RuntimeConf", _Async)
    with pytest.raises(RuntimeError, match="launch_blocking"):
        with counters.count_region():
            pass


def test_decode_mean_needs_decode_steps(x):
    with counters.count_region() as region:
        ops.add(x, x)
    with pytest.raises(ValueError, match="no decode steps"):
        region.counts.decode_ops


def _generate_kwargs(new_tokens):
    ids = Tensor(np.arange(1, 9, dtype=np.int64)[None])
    return dict(input_ids=ids, attention_mask=ops.ones_like(ids), do_sample=False, use_cache=True,
                max_new_tokens=new_tokens, return_dict_in_generate=True, output_logits=True,
                pad_token_id=0)


@pytest.fixture(scope="module")
def llama():
    # Stock on purpose: mindnlp.transformers' public names may be bound to mindnlp.accel's classes.
    from mindnlp.transformers import LlamaConfig
    from mindnlp.transformers.models.llama.modeling_llama import LlamaForCausalLM

    mindspore.set_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_stock_llama_decode_counts_are_stable(llama):
    counts = counters.count_generate(llama, _generate_kwargs(5))
    assert counts.decode_tokens == 4
    # The last step lacks the input preparation for a next forward, so compare the others.
    steady = {s.n_ops for s in counts.steps[1:-1]}
    assert len(steady) == 1 and steady.pop() > 50
    # Stock generate() reads the stop flags back once per step, and nothing else syncs.
    for step in counts.steps[1:]:
        (site, n), = step.syncs.items()
        assert site.startswith("mindnlp/transformers/generation/utils.py:") and n == 1


def test_an_added_host_read_counts_once_per_step(llama):
    baseline = counters.count_generate(llama, _generate_kwargs(4))
    sites = []

    def read_back(module, args, output):
        sites.append(_here())
        output[0].asnumpy()

    handle = llama.model.register_forward_hook(read_back)
    try:
        counts = counters.count_generate(llama, _generate_kwargs(4))
    finally:
        handle.remove()
    site = sites[0]
    for before, after in zip(baseline.steps, counts.steps):
        assert after.syncs - before.syncs == collections.Counter({site: 1})
        assert after.ops == before.ops


def test_step_method_must_exist(llama):
    with pytest.raises(TypeError, match="no method"):
        counters.count_generate(llama, _generate_kwargs(2), step_method="no_such_method")


def test_stock_qwen2_moe_syncs_once_per_expert_per_layer():
    from mindnlp.transformers import Qwen2MoeConfig
    from mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeForCausalLM

    mindspore.set_seed(0)
    config = Qwen2MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, num_experts=60, num_experts_per_tok=4,
                            max_position_embeddings=64)
    model = Qwen2MoeForCausalLM(config).eval()
    counts = counters.count_generate(model, _generate_kwargs(3))
    for step in counts.steps:
        assert step.ops["NonZero"] == 2 * 60
        moe_syncs = sum(n for site, n in step.syncs.items() if "modeling_qwen2_moe.py" in site)
        assert moe_syncs == 2 * 60
    assert counts.top(1)["ops"] == [("NonZero", 120.0)]
