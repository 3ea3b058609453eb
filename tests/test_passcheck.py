"""The pass check and the judge-equivalent protocol."""
import json
import os
import shutil

import numpy as np
import pytest

import demo_images
import fixtures
import judge
import passcheck


def make_run(steps=5, vocab=50, seed=0, names=("hello", "novelist")):
    rng = np.random.default_rng(seed)
    prompts = []
    for index, name in enumerate(names):
        logits = rng.standard_normal((steps, vocab)).astype(np.float32) * 4
        ids = logits.argmax(-1).tolist()
        prompts.append({"name": name, "text": f"Answer {index}: " + " ".join(map(str, ids)), "ids": ids,
                        "logits": logits})
    return {"family": "qwen2_moe", "prompts": prompts}


def copy_run(run):
    return {"family": run["family"], "prompts": [dict(p, logits=p["logits"].copy(), ids=list(p["ids"]))
                                                 for p in run["prompts"]]}


def qualified_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the check ------------------------------------------------------------------------------------

def test_identical_run_passes():
    run = make_run()
    checks = passcheck.check_run(run, copy_run(run))
    assert passcheck.all_passed(checks)
    assert all(c.ids_identical and c.text_equal and c.first_argmax_step == -1 and c.max_softmax_diff == 0.0
               for c in checks)


def test_text_compared_after_strip_and_lower():
    run = make_run()
    other = copy_run(run)
    other["prompts"][0]["text"] = "  " + run["prompts"][0]["text"].upper() + "\n"
    other["prompts"][0]["logits"] += 5.0 * np.eye(5, 50, dtype=np.float32)
    check = passcheck.check_run(run, other)[0]
    assert check.passed and check.text_equal and check.max_softmax_diff > 1e-3


def test_different_text_passes_when_softmax_is_close():
    run = make_run()
    other = copy_run(run)
    other["prompts"][1]["text"] += " extra"
    other["prompts"][1]["logits"] += 1e-5
    check = passcheck.check_run(run, other)[1]
    assert check.passed and not check.text_equal and "allclose" in check.reason


def test_perturbed_logit_fails():
    run = make_run()
    other = copy_run(run)
    other["prompts"][0]["text"] += "!"
    other["prompts"][0]["logits"][2, 7] += 0.5
    checks = passcheck.check_run(run, other)
    assert not checks[0].passed and checks[1].passed
    assert not passcheck.all_passed(checks)
    assert checks[0].max_softmax_diff > 1e-3 and "softmax differs" in checks[0].reason


def test_flipped_token_is_caught():
    run = make_run()
    other = copy_run(run)
    prompt = other["prompts"][1]
    step = 3
    logits = prompt["logits"]
    runner_up = int(np.argsort(logits[step])[-2])
    logits[step, runner_up] = logits[step].max() + 1.0
    prompt["ids"][step] = runner_up
    prompt["text"] = "Answer 1: " + " ".join(map(str, prompt["ids"]))
    check = passcheck.check_run(run, other)[1]
    assert not check.passed and not check.ids_identical and not check.text_equal
    assert check.first_argmax_step == step


def test_shape_mismatch_fails_clearly():
    run = make_run(steps=5)
    shorter = make_run(steps=4)
    shorter["prompts"][0]["text"] = "something else"
    check = passcheck.check_run(run, shorter)[0]
    assert not check.passed and "shapes differ" in check.reason and "(5, 50)" in check.reason
    assert check.first_argmax_step == 4


def test_vocab_mismatch_and_prompt_mismatch():
    run = make_run(vocab=50)
    wide = make_run(vocab=60)
    wide["prompts"][0]["text"] = "x"
    check = passcheck.check_run(run, wide)[0]
    assert not check.passed and check.first_argmax_step is None and check.max_softmax_diff == float("inf")
    with pytest.raises(ValueError, match="prompts"):
        passcheck.check_run(run, make_run(names=("hello",)))
    with pytest.raises(ValueError, match="order"):
        passcheck.check_run(run, make_run(names=("novelist", "hello")))


def test_target_round_trip(tmp_path):
    run = make_run()
    target_dir = passcheck.save_target(run, str(tmp_path / "target"))
    loaded = passcheck.load_target(target_dir)
    assert [p["name"] for p in loaded["prompts"]] == ["hello", "novelist"]
    for saved, original in zip(loaded["prompts"], run["prompts"]):
        assert saved["text"] == original["text"] and saved["ids"] == original["ids"]
        np.testing.assert_array_equal(saved["logits"], original["logits"])
    assert passcheck.all_passed(passcheck.check_run(loaded, run))
    os.remove(os.path.join(target_dir, "01-novelist.npy"))
    with pytest.raises(FileNotFoundError, match="01-novelist.npy"):
        passcheck.load_target(target_dir)


# -- the protocol ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen_moe_tiny(tmp_path_factory):
    return fixtures.ensure("qwen2_moe", "tiny", str(tmp_path_factory.mktemp("protocol")))


def test_load_rejects_bad_directories(tmp_path, qwen_moe_tiny):
    with pytest.raises(judge.FixtureError, match="does not exist"):
        judge.load("qwen2_moe", str(tmp_path / "nowhere"), "stock")
    with pytest.raises(judge.FixtureError, match="config.json"):
        judge.load("qwen2_moe", str(tmp_path), "stock")
    with pytest.raises(judge.FixtureError, match="unknown variant"):
        judge.load("qwen2_moe", qwen_moe_tiny, "fast")
    with pytest.raises(judge.FixtureError, match="not llama"):
        judge.load("llama", qwen_moe_tiny, "stock")

    broken = str(tmp_path / "broken")
    shutil.copytree(qwen_moe_tiny, broken)
    with open(os.path.join(broken, "model.safetensors"), "r+b") as handle:
        handle.truncate(1 << 20)
    with pytest.raises(judge.FixtureError, match="truncated"):
        judge.load("qwen2_moe", broken, "stock")
    os.remove(os.path.join(broken, "model.safetensors"))
    with pytest.raises(judge.FixtureError, match="missing"):
        judge.load("qwen2_moe", broken, "stock")

    with open(os.path.join(broken, "config.json"), "w", encoding="utf-8") as handle:
        json.dump({"model_type": "gpt2"}, handle)
    with pytest.raises(judge.FixtureError, match="unknown config type"):
        judge.family_of(broken)
    assert judge.family_of(qwen_moe_tiny) == "qwen2_moe"


def test_missing_image_is_a_clear_error_and_an_image_not_given_is_drawn(tmp_path):
    with pytest.raises(judge.FixtureError, match="no file"):
        judge.run_family("qwen2_vl", None, None, images={"cat": str(tmp_path / "cat.png"), "man": str(tmp_path)})
    cat = demo_images.write_demo_images(str(tmp_path / "images"))["cat"]
    cases = dict(judge.prompt_cases("qwen2_vl", {"cat": cat}))
    assert cases["describe"]["image"].size == demo_images.CAT_SIZE
    assert cases["story"]["image"].size == demo_images.MAN_SIZE  # the drawing, at the judge's size
    assert judge.warmup_case("qwen2_vl", {"cat": cat})["image"].size == demo_images.WARMUP_SIZE


def test_protocol_run_on_tiny_fixture(qwen_moe_tiny, tmp_path):
    loaded = judge.load("qwen2_moe", qwen_moe_tiny, "stock")
    assert loaded.model_class == "mindnlp.transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeForCausalLM"
    assert loaded.ours_is_stock
    result = judge.run_family("qwen2_moe", loaded.model, loaded.processor, max_new_tokens=2)

    assert [p["name"] for p in result["prompts"]] == ["hello", "novelist", "summary"]
    assert result["prefill_s"] > 0 and result["warmup_s"] > 0
    # the judge's rule; with 2 new tokens the difference of two timings can fall below zero on a busy host
    decode = [(p["e2e_s"] - p["prefill_s"]) / p["new_tokens"] for p in result["prompts"]]
    assert result["decode_per_token_s"] == pytest.approx(float(np.mean(decode)))
    assert result["decode_rule"] == "(e2e - prefill) / new_tokens"
    assert result["memory"]["source"] in ("max_memory_reserved", "VmHWM", "ru_maxrss")
    assert result["memory"]["peak_bytes"] > 0
    for prompt in result["prompts"]:
        assert prompt["new_tokens"] == 2 and len(prompt["ids"]) == 2 and prompt["text"]
        assert prompt["logits"].shape == (2, 151936) and prompt["logits"].dtype == np.float32
        assert prompt["prefill_s"] > 0 and prompt["e2e_s"] > 0
    lengths = [p["prompt_tokens"] for p in result["prompts"]]
    assert lengths[0] < lengths[1] < lengths[2]
    assert len({p["text"] for p in result["prompts"]}) == 3

    target = passcheck.load_target(passcheck.save_target(result, str(tmp_path / "target")))
    assert passcheck.all_passed(passcheck.check_run(target, result))


def test_ours_variant_reports_our_class(qwen_moe_tiny):
    ours = judge.accelerated_class("qwen2_moe")
    assert ours is not None and ours is not judge.stock_class("qwen2_moe")
    loaded = judge.load("qwen2_moe", qwen_moe_tiny, "ours")
    assert type(loaded.model) is ours
    assert not loaded.ours_is_stock
    assert loaded.model_class == qualified_name(ours) and loaded.model_class.startswith("mindnlp.accel.")


def test_ours_variant_reports_stock_when_our_class_falls_back(qwen_moe_tiny, monkeypatch):
    ours = judge.accelerated_class("qwen2_moe")
    stock = judge.stock_class("qwen2_moe")
    monkeypatch.setattr(ours, "supports", classmethod(lambda cls, config: (False, "rejected by the test")))
    loaded = judge.load("qwen2_moe", qwen_moe_tiny, "ours")
    assert type(loaded.model) is stock
    assert loaded.ours_is_stock
    assert loaded.model_class == qualified_name(stock)


@pytest.mark.parametrize("family,calls,question", [("qwen2_vl", 5, "This a warm up prompt"),
                                                    ("janus", 1, "Hello, this is a warm-up sequence to prepare the "
                                                                 "Janus model."),
                                                    ("qwen2_moe", 1, None)])
def test_warm_ups_are_the_judge_scripts(monkeypatch, family, calls, question):
    """The judge scripts' warm-up calls (their prompt and picture, 10 new tokens, no logits), then the
    first prompt's prefill call of 1 token without logits and its call with them."""
    made = []
    monkeypatch.setattr(judge, "_timed_generate",
                        lambda *args, **kwargs: made.append((args[3], args[4], kwargs.get("logits", True)))
                        or (0.0, None, None))
    monkeypatch.setattr(judge, "prompt_cases", lambda family_, images: [("only", {})])
    monkeypatch.setattr(judge, "_image_files", judge._load_images)  # janus: the pictures, not files, suffice here
    with pytest.raises(AttributeError):  # the fake output has no logits: the run stops after the first prompt's calls
        judge.run_family(family, None, None, max_new_tokens=50)
    warmup = judge.warmup_case(family, None)
    assert [(tokens, logits) for _, tokens, logits in made] == [(10, False)] * calls + [(1, False), (50, True)]
    for case, _, _ in made[:calls]:
        if question is None:
            assert case == warmup and case["messages"][1]["content"] == judge.MOE_WARMUP
        else:
            assert case["question"] == question and case["image"].size == demo_images.WARMUP_SIZE
