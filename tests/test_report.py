"""The markdown report and its charts."""
import os

import pytest

import report


def _result(family, variant, scale, **extra):
    result = {
        "family": family, "variant": variant, "model": "Qwen/Qwen1.5-MoE-A2.7B-Chat",
        "prefill_s": 3.79 * scale, "decode_s_per_token": 1.39 * scale,
        "memory_bytes": 2_500_000_000 * scale, "memory_source": "VmHWM",
        "prefill_ops": 13000 * scale, "prefill_syncs": 1450 * scale,
        "decode_ops": 454 * scale, "decode_syncs": 121 * scale,
    }
    result.update(extra)
    return result


def _rows(text):
    """{first cell: other cells} of every table row."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_writes_report_and_charts_with_the_given_numbers(tmp_path):
    results = [
        _result("qwen2_moe", "stock", 1.0, pass_check="3/3 prompts match",
                top={"ops": [("NonZero", 120.0)], "syncs": [("modeling_qwen2_moe.py:461", 120.0)]}),
        _result("qwen2_moe", "ours", 0.25, pass_check="3/3 prompts match",
                predicted_prefill_s=0.5, predicted_decode_s=0.08, cpu_steal_pct=12.5,
                prompt_lengths="cat 1023 (999 image), man 351 (324 image)"),
    ]
    path = report.write_report(results, str(tmp_path), dispatch="PyNative, launch_blocking", machine="test box")
    assert path == os.path.join(str(tmp_path), "report.md")
    for filename, *_ in report.CHARTS:
        with open(tmp_path / filename, "rb") as chart:
            assert chart.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(path, encoding="utf-8").read()
    rows = _rows(text)
    assert rows["prefill (s)"] == ["3.79", "0.9475", "4.00×"]
    assert rows["decode (s/token)"] == ["1.39", "0.3475", "4.00×"]
    assert rows["memory (GB)"] == ["2.500", "0.625", "4.00×"]
    assert rows["ops per decode token"] == ["454.0", "113.5", "4.00×"]
    assert rows["syncs per decode token"] == ["121.0", "30.2", "4.00×"]
    assert rows["Ascend decode (s/token), prediction"] == ["—", "0.08", "—"]
    assert rows["host CPU steal during the run (%)"] == ["—", "12.5", ""]
    assert rows["pass check, ours"][0] == "3/3 prompts match"
    assert rows["prompt lengths (positions)"] == ["—", "cat 1023 (999 image), man 351 (324 image)", ""]
    assert "test box" in text and "PyNative, launch_blocking" in text
    assert "`NonZero` 120" in text
    for filename, *_ in report.CHARTS:
        assert f"]({filename})" in text


def test_a_family_with_only_stock_still_reports(tmp_path):
    path = report.write_report([_result("llama", "stock", 1.0)], str(tmp_path), dispatch="PyNative")
    assert _rows(open(path, encoding="utf-8").read())["prefill (s)"] == ["3.79", "—", "—"]


def test_missing_field_is_an_error(tmp_path):
    broken = _result("llama", "stock", 1.0)
    del broken["decode_syncs"]
    with pytest.raises(ValueError, match="decode_syncs"):
        report.write_report([broken], str(tmp_path), dispatch="PyNative")


def test_duplicate_or_unknown_variant_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="two stock results"):
        report.write_report([_result("llama", "stock", 1.0)] * 2, str(tmp_path), dispatch="PyNative")
    with pytest.raises(ValueError, match="variant must be"):
        report.write_report([_result("llama", "fast", 1.0)], str(tmp_path), dispatch="PyNative")
