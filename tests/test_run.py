"""eval/run.py refuses bad input with a clear message and a non-zero exit, before any model runs."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "run.py"), *args],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_unknown_family():
    assert "unknown families ['gpt2']" in run("--families", "gpt2")


def test_missing_model_directory(tmp_path):
    message = run("--families", "qwen2_moe", "--model-path", f"qwen2_moe={tmp_path / 'none'}")
    assert "does not exist" in message


@pytest.mark.parametrize("config,expected", [
    ({"model_type": "bert"}, "is not qwen2_moe's"),
    ({"model_type": "qwen2_moe"}, "model.safetensors is missing"),
])
def test_wrong_or_partial_model_directory(tmp_path, config, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert expected in run("--families", "qwen2_moe", "--model-path", f"qwen2_moe={tmp_path}")


def test_missing_image(tmp_path):
    assert "no such file" in run("--families", "qwen2_vl", "--image", f"cat={tmp_path / 'cat.png'}")


def test_malformed_pair():
    assert "NAME=VALUE" in run("--model-path", "qwen2_moe")


def test_cpu_steal_share_from_proc_stat(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "eval"))
    import run as run_module

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 20 0 0\ncpu0 1 2 3\n")
    before = run_module.cpu_ticks(str(stat))
    assert before == (20, 985)
    stat.write_text("cpu  200 0 90 900 10 0 5 70 0 0\n")
    after = run_module.cpu_ticks(str(stat))
    assert run_module.steal_share(before, after) == pytest.approx(50 / 290)
    assert run_module.steal_share(None, after) is None
    assert run_module.cpu_ticks(str(tmp_path / "missing")) is None


def test_compile_times_and_the_verdict_reach_the_report():
    sys.path.insert(0, os.path.join(ROOT, "eval"))
    import logging

    import run as run_module

    log = run_module.AccelLog()
    logger = logging.getLogger("mindnlp.accel.test")
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        logger.info("compiled in %.2f s", 1.5, extra={"compile_seconds": 1.5})
        logger.info("compiled decode step adopted for batch 1")
        logger.info("compiled in %.2f s", 0.25, extra={"compile_seconds": 0.25})
    finally:
        logger.removeHandler(log)
    assert log.compile_s == [1.5, 0.25] and len(log.messages) == 3
    ours = {"accel_log": {"messages": log.messages, "compile_s": log.compile_s, "protocol_compiles": 1}}
    notes = run_module.compile_notes("qwen2_moe", ours)
    assert "1 time(s) in the judge's protocol" in notes[0] and "1.50 s" in notes[0]
    assert "1 time(s) in the counted generate" in notes[0]
    assert notes[1] == "qwen2_moe: compiled decode step adopted for batch 1"
    assert run_module.compile_notes("llama", {"accel_log": {"messages": [], "compile_s": []}}) == []
