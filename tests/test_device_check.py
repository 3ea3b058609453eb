"""eval/device_check.py: a one-line refusal without a device, its whole flow in the as-on-Ascend mode,
and the choice of the setting to submit with."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import device_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "eval", "device_check.py")


def run_script(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.environ["MINDNLP_TREE"], os.path.join(ROOT, "eval")]))
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=1200)


def test_without_a_device_it_stops_with_one_line(tmp_path):
    proc = run_script("--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = [line for line in proc.stdout.splitlines() if line.startswith("device check:")]
    assert ours == ["device check: no Ascend device here (MindSpore's device target is CPU); run it on the 910B"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_flow_in_the_as_on_ascend_mode(tmp_path):
    out = tmp_path / "check"
    proc = run_script("--as-ascend", "--size", "tiny", "--families", "llama", "--max-new-tokens", "2",
                      "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "device_check.json", encoding="utf-8") as f:
        report = json.load(f)
    assert [s["env"] for s in report["settings"]] == [env for _, env in device_check.SETTINGS]
    assert all(s["passed"] and s["families"]["llama"]["complete"] for s in report["settings"])
    best = max(report["settings"], key=lambda s: s["score"])
    assert report["submit_with"] == best["env"]
    assert report["environment"]["mode"].startswith("as-on-Ascend")
    fused = report["settings"][0]["families"]["llama"]["kernels"]
    assert any(name.startswith("rotary_position_embedding") and choice == "fused" for name, choice in fused.items())
    for setting in report["settings"]:
        if setting["env"]["MINDNLP_ACCEL_FUSED"] == "0":  # tries none
            assert setting["families"]["llama"]["kernels"] == {}
    assert {s["env"]["MINDNLP_ACCEL_JIT"] for s in report["settings"]} == {"0", "1"}  # graphs swept on and off
    text = (out / "device_check.md").read_text(encoding="utf-8")
    assert "## Submit with" in text and best["name"] in text.split("## Submit with")[1]


def family(prefill, decode, memory):
    return {"complete": True, "kernels": {}, "prefill_s": prefill, "decode_s": decode, "memory_bytes": memory}


def test_score_is_the_judges_mean_of_three_ratios():
    families = {"a": family((2.0, 1.0), (1.0, 0.5), (4, 4)), "b": family((1.0, 1.0), (1.0, 1.0), (4, 2))}
    # prefill (2 + 1) / 2, decode (2 + 1) / 2, memory (1 + 2) / 2: all 1.5
    assert device_check.score(families) == 150


def test_submit_with_the_best_passing_setting_or_none(tmp_path):
    args = SimpleNamespace(out=str(tmp_path))
    results = [{"name": "slow", "env": {"X": "1"}, "exit": 0, "passed": True, "score": 120, "families": {}},
               {"name": "fast but wrong", "env": {"X": "2"}, "exit": 1, "passed": False, "score": None,
                "families": {}},
               {"name": "fast", "env": {"X": "3"}, "exit": 0, "passed": True, "score": 180, "families": {}}]
    assert device_check.write_report({}, results, args)["name"] == "fast"
    failing = [dict(r, passed=False, score=None) for r in results]
    assert device_check.write_report({}, failing, args) is None
    assert "No setting passes" in (tmp_path / "device_check.md").read_text(encoding="utf-8")
