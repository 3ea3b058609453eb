"""The Ascend cost model: weight bytes of the real models, and the fit of the host constants."""
import pytest

import costmodel

QWEN_MOE = "Qwen/Qwen1.5-MoE-A2.7B-Chat"
DEEPSEEK = "deepseek-ai/deepseek-moe-16b-chat"
QWEN_VL = "Qwen/Qwen2-VL-2B-Instruct"
JANUS = "deepseek-ai/Janus-Pro-7B"


@pytest.mark.parametrize("model, floor_ms", [(QWEN_MOE, 3.0), (DEEPSEEK, 3.3), (JANUS, 8.1), (QWEN_VL, 1.9)])
def test_decode_floor_matches_the_published_estimate(model, floor_ms):
    assert costmodel.memory_floor_seconds(model, "decode") * 1e3 == pytest.approx(floor_ms, rel=0.03)


@pytest.mark.parametrize("model, billions", [(QWEN_MOE, 14.3), (DEEPSEEK, 16.4), (QWEN_VL, 2.2)])
def test_total_parameters_match_the_model_cards(model, billions):
    assert costmodel.real_model(model).total_params / 1e9 == pytest.approx(billions, rel=0.02)


def test_prefill_reads_every_expert_and_the_vision_tower():
    moe = costmodel.real_model("qwen2_moe")
    assert moe.bytes_read("prefill") > 5 * moe.bytes_read("decode")
    vl = costmodel.real_model(QWEN_VL)
    assert vl.bytes_read("prefill") - vl.bytes_read("decode") == 2 * vl.vision_params


def test_unknown_model_and_phase_are_errors():
    with pytest.raises(KeyError, match="unknown model"):
        costmodel.real_model("gpt2")
    with pytest.raises(ValueError, match="phase"):
        costmodel.real_model(QWEN_MOE).bytes_read("train")


def _synthetic_samples(c_op, c_sync):
    counts = [
        (QWEN_MOE, {"prefill_ops": 13000, "prefill_syncs": 1450, "decode_ops": 5300, "decode_syncs": 1441}),
        (DEEPSEEK, {"prefill_ops": 16000, "prefill_syncs": 1800, "decode_ops": 6000, "decode_syncs": 900}),
        (QWEN_VL, {"prefill_ops": 9000, "prefill_syncs": 60, "decode_ops": 1900, "decode_syncs": 12}),
        (JANUS, {"prefill_ops": 7000, "prefill_syncs": 30, "decode_ops": 1800, "decode_syncs": 2}),
    ]
    samples = []
    for model, c in counts:
        for phase in costmodel.PHASES:
            seconds = (c_op * c[f"{phase}_ops"] + c_sync * c[f"{phase}_syncs"]
                       + costmodel.memory_floor_seconds(model, phase))
            samples.append((c, model, phase, seconds))
    return samples


def test_calibration_recovers_known_constants():
    fit = costmodel.calibrate(_synthetic_samples(c_op=40e-6, c_sync=250e-6))
    for c_op, c_sync in fit.constants.values():
        assert c_op == pytest.approx(40e-6, rel=1e-6)
        assert c_sync == pytest.approx(250e-6, rel=1e-6)
    assert fit.rms_relative_error < 1e-6
    counts = {"decode_ops": 1000, "decode_syncs": 10}
    expected = 1000 * 40e-6 + 10 * 250e-6 + costmodel.memory_floor_seconds(QWEN_MOE, "decode")
    assert costmodel.predict(fit, counts, "qwen2_moe", "decode") == pytest.approx(expected, rel=1e-6)


def test_constants_stay_non_negative():
    # Times that fall as syncs rise would want a negative sync cost.
    samples = []
    for ops, syncs, seconds in [(1000, 0, 0.2), (1000, 100, 0.15), (2000, 200, 0.3), (3000, 10, 0.6)]:
        samples.append(({"decode_ops": ops, "decode_syncs": syncs}, JANUS, "decode", seconds))
    fit = costmodel.calibrate(samples)
    c_op, c_sync = fit.constants["decode"]
    assert c_sync == 0.0 and c_op > 0
    assert len(fit.residuals) == 4 and all(r[4] != 0 for r in fit.residuals)


def test_per_phase_fit_recovers_each_phase_constants():
    prefill = [s for s in _synthetic_samples(c_op=90e-6, c_sync=600e-6) if s[2] == "prefill"]
    decode = [s for s in _synthetic_samples(c_op=30e-6, c_sync=200e-6) if s[2] == "decode"]
    fit = costmodel.calibrate(prefill + decode, by_phase=True)
    assert fit.constants["prefill"] == pytest.approx((90e-6, 600e-6), rel=1e-6)
    assert fit.constants["decode"] == pytest.approx((30e-6, 200e-6), rel=1e-6)
    assert "prefill: 90.00 us x ops" in "\n".join(fit.describe())


def test_too_few_samples_is_an_error():
    with pytest.raises(ValueError, match="at least 3 samples"):
        costmodel.calibrate(_synthetic_samples(1e-5, 1e-4)[:2])
    decode_only = [s for s in _synthetic_samples(1e-5, 1e-4) if s[2] == "decode"]
    with pytest.raises(ValueError, match="calibrating prefill needs at least 3 samples"):
        costmodel.calibrate(decode_only, by_phase=True)


def test_bad_phase_is_an_error():
    samples = _synthetic_samples(1e-5, 1e-4)
    with pytest.raises(ValueError, match="phase must be one of"):
        costmodel.calibrate(samples + [({}, QWEN_MOE, "train", 1.0)])
    with pytest.raises(ValueError, match="phase must be one of"):
        costmodel.predict(costmodel.calibrate(samples), {}, QWEN_MOE, "train")


def test_baseline_samples_use_the_judged_stock_times():
    stock = {"qwen2_moe": {"prefill_ops": 1, "prefill_syncs": 0, "decode_ops": 1, "decode_syncs": 0}}
    samples = costmodel.baseline_samples(stock)
    assert [(s[1], s[2], s[3]) for s in samples] == [(QWEN_MOE, "prefill", 1.955), (QWEN_MOE, "decode", 0.635)]


def test_fit_description_labels_the_numbers_as_predictions():
    text = "\n".join(costmodel.calibrate(_synthetic_samples(4e-5, 2.5e-4)).describe())
    assert "prediction" in text and "40.00 us x ops" in text
