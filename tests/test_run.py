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


def test_compiles_by_kind_and_phase_and_the_verdicts_reach_the_report():
    sys.path.insert(0, os.path.join(ROOT, "eval"))
    import logging

    import run as run_module

    log = run_module.AccelLog()
    logger = logging.getLogger("mindnlp.accel.test")
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        logger.info("compiled in %.2f s", 1.5, extra={"compile_seconds": 1.5, "graph_kind": "prefill"})
        logger.info("compiled decode step adopted for batch 1")
        logger.info("compiled in %.2f s", 0.5, extra={"compile_seconds": 0.5, "graph_kind": "decode step"})
        logger.info("compiled in %.2f s", 0.25, extra={"compile_seconds": 0.25})
    finally:
        logger.removeHandler(log)
    assert log.compile_s == [1.5, 0.5, 0.25] and log.compile_kinds == ["prefill", "decode step", "graph"]
    ours = {"accel_log": {"messages": log.messages, "compile_s": log.compile_s, "compile_kinds": log.compile_kinds,
                          "protocol_compiles": 2},
            "warmup_compiles": 2, "prompts": [{"compiles": {"prefill_call": 0, "e2e_call": 0}}]}
    notes = run_module.compile_notes("qwen2_moe", ours)
    assert notes[0].startswith("qwen2_moe: ours compiled 2 graph(s) in the judge's warm-up and 0 in its timed calls")
    assert "1 prefill, 1 decode step; 2.0 s of compiling" in notes[0] and "1 in the counted generate" in notes[0]
    assert notes[1] == "qwen2_moe: compiled decode step adopted for batch 1"
    ours["prompts"][0]["compiles"]["prefill_call"] = 1
    assert "a compile in a timed call is in its figure" in run_module.compile_notes("qwen2_moe", ours)[0]
    assert run_module.compile_notes("llama", {"accel_log": {"messages": [], "compile_s": []}}) == []


def test_the_stand_in_note_appears_only_where_the_stand_ins_changed_something():
    """On the 0.4.1 wheel stock Qwen2-VL has no fp16 round trip, its shim changes nothing, and the report
    must not say it ran with one (qwen2_vl_cpu_shims gives whether it applied)."""
    sys.path.insert(0, os.path.join(ROOT, "eval"))
    import run as harness
    from qwen2_vl_cpu_shims import stock_qwen2_vl_on_cpu

    assert harness.stand_in_notes("qwen2_vl", {"stock_stand_ins": False}) == []
    assert "qwen2_vl_cpu_shims" in harness.stand_in_notes("qwen2_vl", {"stock_stand_ins": True})[0]
    assert harness.stand_in_notes("qwen2_moe", {"stock_stand_ins": True}) == []
    import inspect
    from mindnlp.transformers.models.qwen2_vl import modeling_qwen2_vl

    on_the_branch = "astype(mindspore.bfloat16)" in inspect.getsource(
        modeling_qwen2_vl.Qwen2VLForConditionalGeneration.forward)
    with stock_qwen2_vl_on_cpu() as applied:
        assert applied == on_the_branch


def test_concurrent_test_sh_runs_each_evaluate_a_tree_of_their_own():
    """Two `bash test.sh` runs from one checkout once shared .build/eval-tree, and the second replaced
    the tree the first was running from. Each run now applies the series to a directory of its own
    (mktemp) and removes it when it ends."""
    import glob

    script = open(os.path.join(ROOT, "test.sh"), encoding="utf-8").read()
    assert 'tree=$(mktemp -d "$PWD/.build/eval-tree.XXXXXX")' in script and "trap 'rm -rf \"$tree\"' EXIT" in script
    before = set(glob.glob(os.path.join(ROOT, ".build", "eval-tree*")))
    runs = [subprocess.Popen(["bash", os.path.join(ROOT, "test.sh"), "--families", "bogus"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode != 0 and "unknown families ['bogus']" in err, err
    assert set(glob.glob(os.path.join(ROOT, ".build", "eval-tree*"))) == before


def test_prompt_lengths_name_the_image_tokens_where_there_are_some():
    sys.path.insert(0, os.path.join(ROOT, "eval"))
    import run as run_module

    assert run_module.prompt_length({"name": "cat", "prompt_tokens": 1023, "image_tokens": 999}) == "cat 1023 (999 image)"
    assert run_module.prompt_length({"name": "hello", "prompt_tokens": 25, "image_tokens": None}) == "hello 25"

