"""eval/device_memory.py and eval/score.py: the device-memory prediction follows our design's sizes,
and the judge's score formula gives stock 100."""
import pytest

import costmodel
import device_memory
import score


def test_the_prediction_uses_the_shipped_sizes():
    from mindnlp.accel.generation import loop, prefill_graph
    from mindnlp.accel.layers import moe, vision

    assert device_memory.OURS_LARGEST_BUCKET == prefill_graph.BUCKETS.largest()
    assert device_memory.OURS_MOE_LARGEST_BUCKET == prefill_graph.BUCKETS.largest(moe.PREFILL_BUCKET_LIMIT)
    assert device_memory.OURS_DECODE_RESERVE == loop.DECODE_RESERVE
    assert device_memory.OURS_CACHE_STEP == loop.COMPILED_CACHE_LENGTH_STEP
    assert device_memory.ours_cache_length(1024) == 1280 and device_memory.ours_cache_length(300) == 768
    assert device_memory.OURS_SCORES_BUDGET == vision.SCORES_BUDGET_BYTES


def test_the_moe_pair_stays_within_stocks_gib_step():
    for name in ("qwen2_moe", "deepseek"):
        stock, ours = (device_memory.predict(name, variant) for variant in ("stock", "ours"))
        assert ours["gib"] <= stock["gib"], (name, stock, ours)


def test_stock_qwen2_vl_holds_the_towers_scores_and_ours_a_chunk_of_them():
    stock, ours = (device_memory.predict("qwen2_vl", variant) for variant in ("stock", "ours"))
    assert stock["transient_what"] == "vision tower attention"
    # 16 heads x 3996 x 3996 scores in bf16, their fp32 softmax and bf16 probabilities, and the bf16 mask
    assert stock["transient"] == 16 * 3996 ** 2 * 8 + 3996 ** 2 * 2
    assert ours["transient"] < stock["transient"] / 4
    assert ours["gib"] <= 5 < stock["gib"]
    with pytest.raises(ValueError, match="variant"):
        device_memory.predict("qwen2_vl", "theirs")


def test_whole_gib_steps():
    p = device_memory.predict("janus", "ours")
    assert (p["gib"] - 1) * device_memory.GIB < p["total"] <= p["gib"] * device_memory.GIB


def test_the_judges_formula_gives_stock_100_and_ratios_otherwise():
    models = score.TRACKS["MoE"]
    stock = score.track_score({model: score.baseline(model) for model in models})
    assert all(value == pytest.approx(100) for value in stock.values())
    faster = {model: dict(score.baseline(model), prefill=score.baseline(model)["prefill"] / 2) for model in models}
    result = score.track_score(faster)
    assert result["prefill"] == pytest.approx(200) and result["total"] == pytest.approx(400 / 3)
    lines = score.describe({"qwen2_moe": faster[models[0]], "deepseek": faster[models[1]]})
    assert any(line.startswith("| MoE | ours | 200 | 100 | 100 | 133 |") for line in lines), lines
    assert any("| multimodal | ours | — |" in line for line in lines)


def test_graph_kernels_cost_their_device_time():
    counts = {"prefill_ops": 10, "prefill_syncs": 1, "decode_ops": 2, "decode_syncs": 0}
    fit = costmodel.Fit({phase: (1e-4, 1e-3) for phase in costmodel.PHASES}, [])
    base = costmodel.predict(fit, counts, "qwen2_moe", "decode")
    with_graph = costmodel.predict(fit, dict(counts, decode_graph_kernels=1000), "qwen2_moe", "decode")
    assert with_graph - base == pytest.approx(1000 * costmodel.GRAPH_KERNEL_SECONDS["middle"])
    high = costmodel.predict(fit, dict(counts, decode_graph_kernels=1000), "qwen2_moe", "decode",
                             costmodel.GRAPH_KERNEL_SECONDS["high"])
    assert high > with_graph
