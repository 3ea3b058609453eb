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
