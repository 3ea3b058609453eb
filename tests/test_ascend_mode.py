"""The "as on Ascend" mode (eval/ascend_mode.py): accel's Ascend branches run on this CPU, each fused
kernel replaced by a stand-in (eval/ascend_kernels.py) that checks every call and returns the kernel's
result by portable ops.

Where each check comes from: argument names, positional order and keyword-only arguments are bound
against the installed MindSpore function's own signature; types, enum strings and some value rules are
validated by running the real function up to MindSpore's "no kernel on this backend" error (its Python
front end); dtypes, layouts, shapes, head counts and mask forms are the rules each stand-in quotes from
the MindSpore 2.6 docstrings. Models built in the mode are dropped after it (see ascend_mode).
"""
import os
import warnings

import numpy as np
import pytest

import mindspore
from mindspore import Tensor
import mindnlp.accel
from mindnlp.transformers import AutoModelForCausalLM

import ascend_coverage
import fixtures
from ascend_kernels import KernelCallError, rotary_layouts
from ascend_mode import AscendMode
from greedy_checks import FIXTURES, GREEDY, assert_same_generation, ids_of, launches_per_layer
from mindnlp.accel import device
from mindnlp.accel.layers import attention as attention_module
from mindnlp.accel.models import janus_vision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F16, F32 = mindspore.float16, mindspore.float32
FAMILIES = ("qwen2_moe", "deepseek", "llama", "qwen2_vl")


def tensor(shape, dtype=F16, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), dtype)


# ---------------------------------------------------------------- the stand-ins' checks

def refusal(call):
    """The KernelCallError a stand-in raises for `call` (run inside a fresh mode)."""
    with AscendMode() as mode:
        with pytest.raises(KernelCallError) as caught:
            call()
    assert mode.refused == [caught.value]
    return caught.value


def test_a_keyword_the_signature_lacks_is_refused_by_the_signature():
    q = tensor((1, 2, 4, 16))
    error = refusal(lambda: mindspore.ops.flash_attention_score(q, q, q, 2, input_layout="BNSD", scale=0.25))
    assert error.kernel == "flash_attention_score" and "signature" in error.rule and "scale" in error.rule


def test_an_unknown_layout_is_refused_by_mindspores_front_end():
    q = tensor((1, 2, 1, 16))
    error = refusal(lambda: mindspore.ops.incre_flash_attention(q, [q], [q], num_heads=2, input_layout="BXSD"))
    assert error.kernel == "incre_flash_attention" and "front end" in error.rule and "BXSD" in error.rule


def _bnsd(steps=4, length=4, heads=2, kv_heads=2, dim=16, dtype=F16):
    return tensor((1, heads, steps, dim), dtype), tensor((1, kv_heads, length, dim), dtype, 1)


@pytest.mark.parametrize("call, rule", [
    (lambda: mindspore.ops.flash_attention_score(*(lambda q, k: (q, k, k))(*_bnsd(dtype=F32)), 2, input_layout="BNSD"),
     "float16 and bfloat16"),
    (lambda: mindspore.ops.flash_attention_score(*(lambda q, k: (q, k, k))(*_bnsd(dim=8)), 2, input_layout="BNSD"),
     "multiple of 16"),
    (lambda: mindspore.ops.flash_attention_score(*(lambda q, k: (q, k, k))(*_bnsd()), 3, input_layout="BNSD"),
     "head_num 3"),
    (lambda: mindspore.ops.flash_attention_score(*(lambda q, k: (q, k, k))(*_bnsd()), 2, input_layout="BNSD",
                                                 attn_mask=tensor((1, 1, 4, 4))), "bool or uint8"),
    (lambda: mindspore.ops.flash_attention_score(*(lambda q, k: (q, k, k))(*_bnsd()), 2, input_layout="BNSD",
                                                 attn_mask=Tensor(np.zeros((1, 4, 4), bool))), "attn_mask (1, 4, 4)"),
    (lambda: mindspore.ops.incre_flash_attention(*(lambda q, k: (q, [k], [k]))(*_bnsd(steps=2)), num_heads=2,
                                                 input_layout="BNSD"), "(B, N, 1, D)"),
    (lambda: mindspore.ops.incre_flash_attention(*(lambda q, k: (q, [k], [k]))(*_bnsd(steps=1, heads=4)),
                                                 num_heads=4, num_key_value_heads=3, input_layout="BNSD"), "multiple"),
    (lambda: mindspore.ops.incre_flash_attention(*(lambda q, k: (q, [k], [k]))(*_bnsd(steps=1)), num_heads=2,
                                                 input_layout="BNSD", attn_mask=Tensor(np.zeros((1, 1, 2, 4), bool))),
     "(B, 1, 1, S)"),
    # decode in BNSD: B * N = 32 > 8 * S = 8 with D = 128 (256 bytes, 32-byte aligned) is not allowed
    (lambda: mindspore.ops.rotary_position_embedding(tensor((2, 32, 1, 128)), tensor((1, 1, 1, 128)),
                                                     tensor((1, 1, 1, 128)), 0), "forbids"),
    (lambda: mindspore.ops.rotary_position_embedding(tensor((2, 5, 4, 16)), tensor((2, 4, 1, 16)),
                                                     tensor((2, 4, 1, 16)), 0), "fits no documented layout"),
    (lambda: mindspore.ops.rms_norm(tensor((2, 8)), tensor((8,), F32), 1e-6), "gamma dtype"),
    (lambda: mindspore.ops.auto_generate.grouped_matmul_v4(
        [tensor((4, 16))], [tensor((2, 16, 8))], group_list=Tensor([2, 2], mindspore.int32), split_item=3,
        group_type=0, group_list_type=1), "front end: ValueError: For 'GroupedMatmulV4'"),
    (lambda: mindspore.ops.auto_generate.grouped_matmul_v4(
        [tensor((4, 16))], [tensor((2, 16, 8))], group_list=Tensor([3, 2], mindspore.int64), split_item=3,
        group_type=0, group_list_type=1), "sum to 5 > 4"),
])
def test_documented_rules_name_the_kernel_and_the_rule(call, rule):
    assert rule in str(refusal(call))


def test_an_argument_the_stand_in_does_not_model_is_refused():
    q, k = _bnsd()
    error = refusal(lambda: mindspore.ops.flash_attention_score(q, k, k, 2, input_layout="BNSD", keep_prob=0.9))
    assert "keep_prob: not modelled" in error.rule


def test_rotary_layouts_read_as_the_docstring_lists_them():
    # ours: x [B, S, N, D] with BS1D tables, which also read as SBND with SB1D (the same broadcast)
    assert rotary_layouts((2, 5, 4, 16), (2, 5, 1, 16)) == ["BSND", "SBND"]
    assert rotary_layouts((2, 4, 5, 16), (1, 1, 5, 16)) == ["BNSD"]
    assert rotary_layouts((2, 5, 4, 16), (7, 7, 7, 16)) == []


# ---------------------------------------------------------------- the stand-ins compute the kernels

def softmax64(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_stand_ins_compute_the_kernels_formula():
    q, k = _bnsd(steps=3, length=5, heads=4, kv_heads=2, dtype=F16)
    v = tensor(k.shape, F16, 2)
    discard = np.zeros((1, 1, 3, 5), bool)
    discard[..., 4] = True
    q64, k64, v64 = (np.repeat(t.asnumpy().astype(np.float64), r, 1) for t, r in ((q, 1), (k, 2), (v, 2)))
    scores = q64 @ k64.swapaxes(2, 3) * 0.25
    want = softmax64(np.where(discard, -np.inf, scores)) @ v64
    with AscendMode():
        fa = mindspore.ops.flash_attention_score(q, k, v, 4, attn_mask=Tensor(discard), scalar_value=0.25,
                                                 input_layout="BNSD")
        ifa = mindspore.ops.incre_flash_attention(q[:, :, :1], [k], [v], attn_mask=Tensor(discard[:, :, :1]),
                                                  num_heads=4, num_key_value_heads=2, input_layout="BNSD",
                                                  scale_value=0.25)
    np.testing.assert_allclose(fa.asnumpy(), want, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(ifa.asnumpy(), want[:, :, :1], rtol=2e-3, atol=2e-3)


def test_rotary_rms_norm_and_grouped_matmul_stand_ins_compute_the_kernels_formula():
    x, angles = tensor((2, 3, 4, 8), F32), np.random.default_rng(3).standard_normal((2, 3, 1, 8))
    cos, sin = Tensor(np.cos(angles), F32), Tensor(np.sin(angles), F32)
    rows, weight = tensor((5, 6), F32), tensor((3, 6, 4), F32, 1)
    with AscendMode():
        rotated = mindspore.ops.rotary_position_embedding(x, cos, sin, 0).asnumpy()
        normed, rstd = mindspore.ops.rms_norm(x, tensor((8,), F32, 2), 1e-6)
        grouped = mindspore.ops.auto_generate.grouped_matmul_v4(
            [rows], [weight], group_list=Tensor([2, 0, 3], mindspore.int64), split_item=3, group_type=0,
            group_list_type=1)[0].asnumpy()
    x64 = x.asnumpy().astype(np.float64)
    half = np.concatenate((-x64[..., 4:], x64[..., :4]), -1)
    np.testing.assert_allclose(rotated, x64 * np.cos(angles) + half * np.sin(angles), rtol=1e-5, atol=1e-6)
    gamma = tensor((8,), F32, 2).asnumpy()
    inv = 1 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normed.asnumpy(), x64 * inv * gamma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rstd.asnumpy(), inv, rtol=1e-5)
    r64, w64 = rows.asnumpy().astype(np.float64), weight.asnumpy().astype(np.float64)
    want = np.concatenate((r64[:2] @ w64[0], r64[2:] @ w64[2]))
    np.testing.assert_allclose(grouped, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- whole models on the Ascend branches

def load(family, dtype, size="tiny"):
    path = fixtures.ensure(family, size, FIXTURES)
    auto = mindnlp.transformers.Qwen2VLForConditionalGeneration if family == "qwen2_vl" else AutoModelForCausalLM
    return auto.from_pretrained(path, ms_dtype=dtype).set_train(False)


PROMPT = dict(input_ids=ids_of([3, 9, 27, 81, 5, 15, 45]), max_new_tokens=6, **GREEDY)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_on_the_ascend_branches_equals_the_portable_path(family, dtype):
    """Default policy: kernels whose stand-in is bit-identical to the twin serve (rotary; Llama's fused
    RMSNorm, which stock Llama itself uses on the pyboost path), the others fall back with a warning.
    Qwen2-VL's "checked" RMSNorm is self-checked on random inputs: in fp16 the kernel's one rounding
    never matches the composite's two; in fp32 the stand-in (x * x, ops.mean) and the composite (Pow,
    mint.mean) disagree on about 1 random probe in 125 (24 of 3000 measured), so either choice may be
    made, and the output equals the portable path bit for bit whichever it is."""
    portable = load(family, dtype).generate(**PROMPT)
    with AscendMode() as mode, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load(family, dtype).generate(**PROMPT)
        decisions = device.decisions()
    mode.assert_no_refusals()
    stock_fused_norm = family == "llama"
    # the fused RmsNorm rounds once where the composite rounds twice, as on the device
    assert_same_generation(got, portable, 4e-3 if stock_fused_norm and dtype == F16 else None)
    assert mode.calls["rotary_position_embedding"] > 0
    norm_choices = {choice for name, choice in decisions.items() if name.startswith("rms_norm")}
    if family == "qwen2_vl":  # "checked": the fused kernel only where it is bit-identical
        assert norm_choices and (dtype == F32 or "fused" not in norm_choices)
        assert any(name.startswith("patch_embed_matmul") for name in decisions)  # the tower is prepared too
    else:
        assert (mode.calls["rms_norm"] > 0) == stock_fused_norm and not norm_choices
    assert any(name.startswith("rotary_position_embedding") and choice == "fused" for name, choice in decisions.items())
    # each refused kernel warns once, naming itself
    refused = [name for name, choice in decisions.items() if choice != "fused"]
    messages = [str(w.message) for w in caught if "fused kernel" in str(w.message)]
    assert sorted(messages) == sorted({m for m in messages}) and len(messages) == len(refused)
    if dtype == F16:
        assert any(name.startswith("attention_") for name in refused)  # not bit-identical: falls back


@pytest.mark.parametrize("family", FAMILIES)
def test_inexact_switch_runs_every_fused_kernel_with_stocks_tokens(family, monkeypatch):
    """Left padding included: a padding query sees no key, which a kernel must survive (no NaN)."""
    monkeypatch.setenv(device.INEXACT_ENV, "1")
    prompt = dict(PROMPT, input_ids=ids_of([0, 0, 3, 9, 27, 81], [5, 15, 45, 7, 21, 63]),
                  attention_mask=ids_of([0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]), pad_token_id=0)
    portable = load(family, F16).generate(**prompt)
    with AscendMode() as mode:
        got = load(family, F16).generate(**prompt)
        decisions = device.decisions()
    mode.assert_no_refusals()
    assert all(np.isfinite(step.asnumpy()).all() for step in got.logits)
    assert_same_generation(got, portable, 1e-2)
    assert mode.calls["flash_attention_score"] > 0 and mode.calls["incre_flash_attention"] > 0
    assert all(choice == "fused" for choice in decisions.values()), decisions
    if family in ("qwen2_moe", "deepseek"):
        assert mode.calls["grouped_matmul_v4"] > 0


@pytest.mark.parametrize("how, problem", [("raise", "raised RuntimeError"), ("disagree", "differs from its twin")])
def test_a_failing_or_disagreeing_kernel_falls_back_with_one_warning(how, problem):
    portable = load("llama", F32).generate(**PROMPT)
    with AscendMode(sabotage={"rotary_position_embedding": how}) as mode:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = load("llama", F32).generate(**PROMPT)
            decisions = device.decisions()
    mode.assert_no_refusals()
    rotary = [str(w.message) for w in caught if "rotary_position_embedding" in str(w.message)]
    assert len(rotary) == 1 and problem in rotary[0]
    assert all(choice.startswith("twin") for name, choice in decisions.items() if name.startswith("rotary"))
    assert_same_generation(got, portable)


def test_a_wrong_argument_in_a_fused_call_fails_naming_kernel_and_rule(monkeypatch):
    """An accel call site passing an argument the kernel documents against (here the decode attention
    asked for BSH with BNSD tensors) is caught although device.choose would have fallen back."""
    wrong = lambda q, k, v, mask: mindspore.ops.incre_flash_attention(  # noqa: E731
        q, [k], [v], num_heads=q.shape[1], input_layout="BSH", scale_value=0.25)
    monkeypatch.setattr(attention_module, "attention_decode_fused", wrong)
    monkeypatch.setenv(device.INEXACT_ENV, "1")
    with AscendMode() as mode:
        load("llama", F16).generate(**PROMPT)
    with pytest.raises(AssertionError, match=r"incre_flash_attention: input_layout 'BSH'"):
        mode.assert_no_refusals()


# Per decoder layer per decode token on the Ascend path (fp16, every fused kernel adopted), each fused
# kernel and each F.linear one launch (ascend_mode): 2 RmsNorm, the q/k/v linear, rotary (the kernel over
# q and k, then a Concat appending v), the cache write (ScatterUpdate), IncreFlashAttention, o_proj, the
# gate/up linear, SiLU (Sigmoid, Mul), the gate-up Mul, down_proj and 2 residual Adds: 15 (issues 10
# and 12 ask for at most 16). Qwen2-VL's RMSNorm is fused here only because MINDNLP_ACCEL_INEXACT=1
# admits the kernel's single rounding ("checked"); its q/k/v biases are inside the one F.linear.
ASCEND_LAYER_LAUNCHES = 15


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_launches_per_layer_on_the_ascend_path(family, monkeypatch):
    monkeypatch.setenv(device.INEXACT_ENV, "1")
    with AscendMode() as mode:
        model = load(family, F16)
        counts = launches_per_layer(model, dict(input_ids=ids_of([3, 4, 5, 6, 7]), max_new_tokens=4, do_sample=False))
    mode.assert_no_refusals()
    assert counts == [ASCEND_LAYER_LAUNCHES] * model.config.num_hidden_layers


# Ascend-only regions the as-on-Ascend tests do not enter, and why ({"path: region": reason}): empty,
# every region is entered; a new one must be entered by these tests or be listed here with its reason.
NOT_ENTERED = {}


def vision_tower_forward(dtype):
    """Janus's SigLIP blocks at a small width (head_dim 64, as SigLIP-L has), kernels prepared as the
    tower prepares them; returns the output."""
    tower = janus_vision.SiglipViT(32, 16, 128, 1, 2, 256).to(dtype)
    device.prepare_kernels(tower, dtype, 1)
    return tower(tensor((1, 3, 32, 32), dtype))


def test_the_fused_vision_attention_is_adopted_where_its_self_check_agrees(monkeypatch):
    monkeypatch.setenv(device.INEXACT_ENV, "1")
    with AscendMode() as mode:  # the mode starts and ends with no kernel decided
        vision_tower_forward(F16)
        decisions = device.decisions()
    mode.assert_no_refusals()
    assert decisions == {"vision_attention_fused/mindspore.float16/2x64": "fused"}


def test_coverage_of_ascend_only_regions(monkeypatch):
    """Every Ascend-only region of mindnlp/accel runs when each model generates in the mode, with the
    default policy in fp32 and with every fused kernel admitted in fp16, or is named in NOT_ENTERED with
    the reason. The models are the "mixed" fixtures: their top-3 routing is what takes the MoE
    combine's running sum. Writes eval_output/ascend_coverage.md (region, lines run)."""
    accel = os.path.dirname(mindnlp.accel.__file__)
    regions = ascend_coverage.accel_regions(accel)
    assert regions, "no Ascend-only region found: the finder is broken"
    recorder = ascend_coverage.LineRecorder(accel)
    for dtype, inexact in ((F32, "0"), (F16, "1")):
        monkeypatch.setenv(device.INEXACT_ENV, inexact)
        for family in FAMILIES:
            with AscendMode() as mode, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                recorder.start()
                try:
                    load(family, dtype, "mixed").generate(**PROMPT)
                finally:
                    recorder.stop()
            mode.assert_no_refusals()
        with AscendMode() as mode:
            recorder.start()
            try:
                vision_tower_forward(dtype)
            finally:
                recorder.stop()
        mode.assert_no_refusals()
    text, unexplained = ascend_coverage.report(regions, recorder.lines, NOT_ENTERED)
    out = os.path.join(ROOT, "eval_output")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ascend_coverage.md"), "w", encoding="utf-8") as f:
        f.write("# Ascend-only regions of mindnlp/accel entered in the as-on-Ascend mode\n\n"
                "Written by tests/test_ascend_mode.py::test_coverage_of_ascend_only_regions.\n\n" + text)
    assert not unexplained, "Ascend-only regions not entered:\n" + "\n".join(
        f"  {r.path}: {r.name}" for r in unexplained)
