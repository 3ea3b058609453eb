"""The offline fixture generator: real topology counts, determinism, loading through stock mindnlp."""
import filecmp
import json
import os

import numpy as np
import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

import demo_images
import fixture_tokenizer
import fixtures
import judge
import run

LOADABLE = ("qwen2_moe", "deepseek", "qwen2_vl", "llama")


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fixtures"))


def tiny(root, family):
    return fixtures.ensure(family, "tiny", root)


def read_tensor(path, name):
    with safe_open(os.path.join(path, "model.safetensors"), framework="np") as handle:
        return handle.get_tensor(name).astype(np.float32)


# -- configs: the topology size keeps every real count ------------------------------------------

def test_topology_keeps_real_counts():
    qwen_moe = fixtures.model_config("qwen2_moe", "topology")
    assert (qwen_moe["num_hidden_layers"], qwen_moe["num_experts"], qwen_moe["num_experts_per_tok"]) == (24, 60, 4)
    assert (qwen_moe["num_attention_heads"], qwen_moe["num_key_value_heads"], qwen_moe["vocab_size"]) == (16, 16, 151936)
    assert qwen_moe["norm_topk_prob"] is False

    deepseek = fixtures.model_config("deepseek", "topology")
    assert (deepseek["num_hidden_layers"], deepseek["n_routed_experts"], deepseek["num_experts_per_tok"]) == (28, 64, 6)
    assert (deepseek["n_shared_experts"], deepseek["first_k_dense_replace"], deepseek["vocab_size"]) == (2, 1, 102400)
    assert deepseek["scoring_func"] == "softmax" and deepseek["norm_topk_prob"] is False

    vl = fixtures.model_config("qwen2_vl", "topology")
    assert (vl["num_hidden_layers"], vl["num_attention_heads"], vl["num_key_value_heads"]) == (28, 12, 2)
    assert vl["vision_config"]["depth"] == 32 and vl["vocab_size"] == 151936 and vl["tie_word_embeddings"]
    assert (vl["image_token_id"], vl["vision_start_token_id"], vl["vision_end_token_id"], vl["video_token_id"]) == (
        151655, 151652, 151653, 151656)

    llama = fixtures.model_config("llama", "topology")
    assert (llama["num_hidden_layers"], llama["num_attention_heads"], llama["num_key_value_heads"]) == (30, 32, 32)
    assert llama["vocab_size"] == 102400


def test_mrope_section_keeps_real_proportions():
    real = fixtures.QWEN2_VL_REAL["rope_scaling"]["mrope_section"]
    for size in fixtures.SIZES:
        config = fixtures.model_config("qwen2_vl", size)
        section = config["rope_scaling"]["mrope_section"]
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        assert sum(section) * 2 == head_dim
        assert np.allclose(np.array(section) / sum(section), np.array(real) / sum(real))


def test_param_table_has_every_expert_and_dense_layer():
    config = fixtures.model_config("deepseek", "topology")
    names = [name for name, _ in fixtures.param_shapes("deepseek", config)]
    experts = [n for n in names if ".experts." in n]
    assert len(experts) == (28 - 1) * 64 * 3
    assert "model.layers.0.mlp.gate_proj.weight" in names
    assert "model.layers.0.mlp.gate.weight" not in names
    assert "model.layers.1.mlp.shared_experts.down_proj.weight" in names


def test_bad_family_or_size_is_rejected():
    with pytest.raises(ValueError, match="unknown family"):
        fixtures.model_config("gpt2", "tiny")
    with pytest.raises(ValueError, match="unknown size"):
        fixtures.model_config("llama", "huge")


# -- building: determinism and caching ------------------------------------------------------------

def test_build_is_byte_identical_for_a_seed(tmp_path):
    first = fixtures.build("llama", "tiny", str(tmp_path / "a"), seed=3)
    second = fixtures.build("llama", "tiny", str(tmp_path / "b"), seed=3)
    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(second))
    match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)

    other = fixtures.build("llama", "tiny", str(tmp_path / "c"), seed=4)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(read_tensor(first, name), read_tensor(other, name))


def test_ensure_caches_and_rebuilds_partial(tmp_path):
    root = str(tmp_path)
    path = fixtures.ensure("llama", "tiny", root)
    assert os.path.basename(path) == f"llama-tiny-{fixtures.fixture_key('llama', 'tiny')}"
    weights = os.path.join(path, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    assert fixtures.ensure("llama", "tiny", root) == path
    assert os.stat(weights).st_mtime_ns == stamp

    os.remove(os.path.join(path, fixtures.COMPLETE_MARKER))
    os.remove(weights)
    assert fixtures.ensure("llama", "tiny", root) == path
    assert os.path.isfile(weights) and os.path.isfile(os.path.join(path, fixtures.COMPLETE_MARKER))
    assert not [name for name in os.listdir(root) if ".partial-" in name]


def test_cli_writes_a_fixture(tmp_path):
    out = str(tmp_path / "cli")
    fixtures.main(["--family", "deepseek", "--size", "tiny", "--out", out])
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["model_type"] == "deepseek"


# -- tokenizers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", fixtures.FAMILIES)
def test_every_id_decodes_to_a_distinct_string(family):
    spec = fixtures.TOKENIZERS[family]["spec"]
    tokenizer = fixture_tokenizer.build_tokenizer(spec)
    assert tokenizer.get_vocab_size() == spec.size
    decoded = tokenizer.decode_batch([[i] for i in range(spec.size)], skip_special_tokens=False)
    assert all(decoded) and len(set(decoded)) == spec.size
    for token_id, content in spec.specials.items():
        assert tokenizer.token_to_id(content) == token_id


def test_tokenizer_round_trips_ascii_and_marks_unknown_text():
    spec = fixtures.TOKENIZERS["qwen2_moe"]["spec"]
    tokenizer = fixture_tokenizer.build_tokenizer(spec)
    text = "Hello, how are you?\n  Tabs\tand {braces} [ok] 12345!"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert fixture_tokenizer.UNK_ID in tokenizer.encode("caf\u00e9").ids
    assert len(tokenizer.encode("The city council said the new plan").ids) == 7


def test_tokenizer_spec_rejects_special_ids_outside_its_range():
    with pytest.raises(ValueError, match="outside"):
        fixture_tokenizer.TokenizerSpec(2000, {1999: "<x>"}, 2001)


def test_auto_tokenizer_chat_templates_and_inputs(fixture_root):
    from mindnlp.transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(tiny(fixture_root, "qwen2_moe"))
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    assert qwen.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert sorted(qwen("Hi there")) == ["attention_mask", "input_ids"]
    assert qwen.convert_tokens_to_ids("<|im_end|>") == 151645 and len(qwen) == 151646

    deepseek = AutoTokenizer.from_pretrained(tiny(fixture_root, "deepseek"))
    text = deepseek.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == fixtures.DEEPSEEK_BOS + "S\n\nUser: Hi\n\nAssistant:"
    assert deepseek("Hi")["input_ids"][0] == 100000 and deepseek.eos_token_id == 100001


# -- weights --------------------------------------------------------------------------------------

def test_damped_rows_cover_every_non_ordinary_id():
    config = fixtures.model_config("qwen2_vl", "tiny")
    damped = set(fixtures.damped_ids("qwen2_vl", config).tolist())
    assert {fixture_tokenizer.UNK_ID, 151643, 151655, config["vocab_size"] - 1} <= damped
    assert 0 not in damped and 151642 not in damped


def test_routers_prefer_few_experts(fixture_root):
    path = tiny(fixture_root, "qwen2_moe")
    router = read_tensor(path, "model.layers.0.mlp.gate.weight")
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((256, router.shape[1])).astype(np.float32)
    logits = hidden @ router.T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    experts = router.shape[0]
    assert probs.max(-1).mean() > 2.0 / experts
    assert len(set(probs.argmax(-1).tolist())) == experts


# -- loading through stock mindnlp and generating -------------------------------------------------

def stock_generate(family, path, max_new_tokens=4):
    """Load family's tiny fixture into stock mindnlp's class and decode greedily.

    The stock class is named explicitly: once mindnlp.accel installs itself the auto classes
    resolve to ours, and this test is about the fixture matching stock's checkpoint layout. Stock
    runs with the harness's CPU stand-ins where it needs them (deepseek and Qwen2-VL on the branch).
    """
    import mindspore
    from mindnlp.transformers import AutoProcessor, AutoTokenizer

    model_class = judge.stock_class(family)
    if family == "qwen2_vl":
        processor = AutoProcessor.from_pretrained(path)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=[text], images=[demo_images.cat_image()], padding=True, return_tensors="ms")
        tokenizer = processor.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        inputs = tokenizer(["The city council said the new plan"], return_tensors="ms")
    model, info = model_class.from_pretrained(path, ms_dtype=mindspore.float32, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    with run.stock_on_cpu(family):
        output = model.generate(**inputs, do_sample=False, use_cache=True, max_new_tokens=max_new_tokens,
                                return_dict_in_generate=True, output_logits=True)
    ids = output.sequences[0, inputs["input_ids"].shape[1]:].asnumpy().tolist()
    logits = np.stack([step[0].asnumpy() for step in output.logits])
    return ids, logits, tokenizer, inputs


@pytest.mark.parametrize("family", LOADABLE)
def test_tiny_fixture_loads_and_generates_peaked(fixture_root, family):
    path = tiny(fixture_root, family)
    try:
        ids, logits, tokenizer, inputs = stock_generate(family, path)
    except judge.FixtureError as error:
        pytest.skip(str(error))
    spec = fixtures.TOKENIZERS[family]["spec"]
    assert len(ids) == 4 and all(0 <= i < spec.n_regular and i != fixture_tokenizer.UNK_ID for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=True)
    assert logits.shape == (4, fixtures.model_config(family, "tiny")["vocab_size"])
    top = np.sort(logits, axis=-1)
    assert np.median(top[:, -1] - top[:, -2]) > 0.5
    assert np.all(top[:, -1] - np.median(logits, axis=-1) > 20.0)
    if family == "qwen2_vl":
        image_tokens = int((inputs["input_ids"].asnumpy() == 151655).sum())
        # the judge's cat (1024 x 768) under the real processor limits: a 54 x 74 grid, 999 image tokens
        assert image_tokens == int(inputs["image_grid_thw"].asnumpy().prod()) // 4 == 999
