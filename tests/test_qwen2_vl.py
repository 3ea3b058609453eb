"""Our Qwen2-VL against stock Qwen2VLForConditionalGeneration on the generated fixtures: the judge's
prompts with the fixture's images, two images in one prompt, a prompt without an image, other
lengths, a left-padded batch, the repetition penalty over the image pads, the stock loops over our
model, M-RoPE positions against stock's get_rope_index, the merge's dtype policy on both bases,
registration, loading, launches and syncs.

Two fixtures: "tiny" (2 layers, GQA 6/1) and "mixed" (3 layers, GQA 6/2), both with the real M-RoPE
section split scaled to their head size. Equality is bit for bit in fp32 and fp16, and every fast
path test asserts that our class served the call (stock's generate never ran for it).
On a branch base (MINDNLP_BASE naming a checkout of the 0.4 branch) stock's merge casts the
embeddings through fp16 and then to bf16, which this CPU cannot run: the tests run stock inside
eval/qwen2_vl_cpu_shims.py, which gives that last cast the embeddings' own dtype (test only).
"""
import numpy as np
import pytest

import mindspore
import mindnlp.transformers
from mindnlp.transformers import AutoProcessor
from mindnlp.transformers.models.auto import modeling_auto
from mindnlp.transformers.models.qwen2_vl import modeling_qwen2_vl as stock_module

import counters
import demo_images
import fixtures
import greedy_checks
import janus_driver
import judge
from greedy_checks import FIXTURES, GREEDY, assert_same_generation
from qwen2_vl_cpu_shims import stock_qwen2_vl_on_cpu
from mindnlp.accel.models import qwen2_vl as ours_module
from mindnlp.accel.models.qwen2_vl import Qwen2VLForConditionalGeneration as Ours
from mindnlp.accel.models.qwen2_vl_positions import VisionTokens, mrope_positions

BRANCH_BASE = janus_driver.janus_dir() is not None  # the 0.4 branch carries llm/inference/janus_pro


@pytest.fixture(scope="module", params=["tiny", "mixed"])
def fixture_path(request):
    return fixtures.ensure("qwen2_vl", request.param, FIXTURES)


@pytest.fixture(scope="module")
def stock(fixture_path):  # pylint: disable=redefined-outer-name
    return stock_module.Qwen2VLForConditionalGeneration.from_pretrained(fixture_path).set_train(False)


@pytest.fixture(scope="module")
def ours(fixture_path):  # pylint: disable=redefined-outer-name
    return mindnlp.transformers.Qwen2VLForConditionalGeneration.from_pretrained(fixture_path).set_train(False)


@pytest.fixture(scope="module")
def processor(fixture_path):  # pylint: disable=redefined-outer-name
    return AutoProcessor.from_pretrained(fixture_path)


# The unit tests' pictures: the demo drawings at sizes these tests can afford on the CPU (448 x 336: 768
# patches per image for stock's S x S attention masks); test_judge_prompts_equal_stock runs the judge's.
CAT_SIZE, MAN_SIZE = (448, 336), (336, 448)


def cat():
    return demo_images.cat_image().resize(CAT_SIZE)


def man():
    return demo_images.man_image().resize(MAN_SIZE)


def stock_generate(model, **kwargs):
    with stock_qwen2_vl_on_cpu():
        return model.generate(**kwargs)


def fast_generate(model, calls, **kwargs):
    return greedy_checks.fast_generate(model, Ours, calls, **kwargs)


def vision_inputs(processor, questions, images_per_prompt, **kwargs):
    """The processor's inputs for one chat prompt per question, each with its images first."""
    texts = []
    for question, images in zip(questions, images_per_prompt):
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
    images = [image for row in images_per_prompt for image in row] or None
    return dict(processor(text=texts, images=images, padding=True, return_tensors="ms", **kwargs))


@pytest.mark.smoke
def test_public_name_and_auto_mapping_are_ours(ours):
    assert isinstance(ours, Ours)
    assert mindnlp.transformers.Qwen2VLForConditionalGeneration is Ours
    assert modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(ours.config)] is Ours


@pytest.mark.smoke
def test_judge_prompts_equal_stock(stock, ours, processor, stock_generate_calls):
    for _, case in judge.prompt_cases("qwen2_vl", None):
        inputs = judge.prepare_inputs("qwen2_vl", ours, processor, case)
        assert int(inputs["image_grid_thw"].asnumpy().prod()) // 4 >= 100
        kwargs = dict(**inputs, max_new_tokens=50, eos_token_id=None, **GREEDY)
        assert_same_generation(stock_generate(stock, **kwargs), fast_generate(ours, stock_generate_calls, **kwargs))


@pytest.mark.parametrize("images", [["cat", "man"], [], ["man"]])
@pytest.mark.parametrize("question", ["Why?", "Describe everything you see here, then tell a story about it."])
def test_other_prompts_equal_stock(stock, ours, processor, stock_generate_calls, images, question):
    """Two images in one prompt, a prompt without an image, and prompts of other lengths."""
    pictures = {"cat": cat(), "man": man()}
    inputs = vision_inputs(processor, [question], [[pictures[name] for name in images]])
    kwargs = dict(**inputs, max_new_tokens=8, **GREEDY)
    assert_same_generation(stock_generate(stock, **kwargs), fast_generate(ours, stock_generate_calls, **kwargs))


def test_video_prompt_equals_stock(stock, ours, processor, stock_generate_calls):
    """A video of four frames (two temporal patches) and an image in one prompt: the video's rows are
    merged without the image's fp16 round trip, and its frames attend separately, as stock's."""
    content = [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "What changes?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    frames = [cat(), man().resize(CAT_SIZE)] * 2
    # mindnlp 0.4's processor fails on videos (a tensor times a string where it expands the video pad),
    # so the video pads are expanded here as it would expand them
    video = dict(processor.image_processor(images=None, videos=[frames], return_tensors="ms"))
    assert video["video_grid_thw"].asnumpy()[0, 0] == 2
    pads = int(video["video_grid_thw"].asnumpy()[0].prod()) // processor.image_processor.merge_size ** 2
    text = text.replace("<|video_pad|>", "<|video_pad|>" * pads)
    inputs = dict(processor(text=[text], images=[man()], return_tensors="ms"), **video)
    kwargs = dict(**inputs, max_new_tokens=6, **GREEDY)
    assert_same_generation(stock_generate(stock, **kwargs), fast_generate(ours, stock_generate_calls, **kwargs))


def test_left_padded_batch_with_images_of_two_sizes_equals_stock(stock, ours, processor, stock_generate_calls):
    processor.tokenizer.padding_side = "left"
    try:
        inputs = vision_inputs(processor, ["Describe it.", "What is the man doing in this picture?"],
                               [[cat()], [man()]])
    finally:
        processor.tokenizer.padding_side = "right"
    assert (inputs["attention_mask"].asnumpy() == 0).any()
    kwargs = dict(**inputs, max_new_tokens=6, **GREEDY)
    assert_same_generation(stock_generate(stock, **kwargs), fast_generate(ours, stock_generate_calls, **kwargs))


def test_repetition_penalty_counts_the_image_pads_as_stock(stock, ours, processor, stock_generate_calls):
    """The real checkpoint's generation config may carry a penalty: stock applies it over every id of
    the sequence, the image pads included, and returns raw logits."""
    penalty = 1.3
    inputs = vision_inputs(processor, ["Describe it."], [[cat()]])
    kwargs = dict(**inputs, max_new_tokens=8, repetition_penalty=penalty, output_scores=True, **GREEDY)
    expected = stock_generate(stock, **kwargs)
    got = fast_generate(ours, stock_generate_calls, **kwargs)
    assert_same_generation(expected, got)
    image_id = ours.config.image_token_id
    for step, (logits, scores, want) in enumerate(zip(got.logits, got.scores, expected.scores)):
        np.testing.assert_array_equal(scores.asnumpy(), want.asnumpy(), err_msg=f"scores, step {step}")
        raw = logits.asnumpy()[0, image_id]
        factor = np.float32(penalty)
        assert scores.asnumpy()[0, image_id] == (raw * factor if raw < 0 else raw / factor)


@pytest.mark.parametrize("options", [dict(num_beams=2), dict(output_scores=True, top_k=4, do_sample=True)])
def test_stock_loops_over_ours_give_stock_results(stock, ours, processor, stock_generate_calls, options):
    """Options the fast path does not serve run stock's loop over our model; its positions come from
    the prompt's M-RoPE positions, then the cache position plus the row's delta."""
    inputs = vision_inputs(processor, ["Describe it."], [[cat()]])
    kwargs = dict(**inputs, max_new_tokens=5, **{**GREEDY, **options})
    mindspore.set_seed(7)
    expected = stock_generate(stock, **kwargs)
    mindspore.set_seed(7)
    got = ours.generate(**kwargs)
    assert stock_generate_calls.of(ours) == 1
    assert_same_generation(expected, got)


def mrope_case(ids, mask=None):
    """ids and mask as arrays; a mask of ones where a vision case gives none (stock's get_rope_index
    reads the mask on that path, and generate always passes one)."""
    ids = np.array(ids, np.int64)
    return ids, np.ones_like(ids) if mask is None else np.array(mask, np.int64)


IMAGE, VIDEO, START, END = 151655, 151656, 151652, 151653


def span(token, count):
    return [START] + [token] * count + [END]


ROPE_CASES = {
    # name: (rows of ids, attention mask or None, image grids or None, video grids or None)
    "one image": ([[5, 6] + span(IMAGE, 6) + [7, 8, 9]], None, [[1, 4, 6]], None),
    "two images": ([[5] + span(IMAGE, 6) + [7] + span(IMAGE, 8) + [8, 9]], None, [[1, 4, 6], [1, 8, 4]], None),
    "image and video": ([[5] + span(VIDEO, 8) + [7] + span(IMAGE, 2) + [9]], None, [[1, 2, 4]], [[2, 4, 4]]),
    "text, mask": ([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]], [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], None, None),
    "one real token, mask": ([[0, 0, 0, 5]], [[0, 0, 0, 1]], None, None),
    "text, no mask": ([[5, 6, 7, 8]], None, None, None),
    "padded batch, image in one row": ([[0, 0, 5] + span(IMAGE, 6) + [7], list(range(5, 17))],
                                       [[0, 0] + [1] * 10, [1] * 12], [[1, 4, 6]], None),
}


@pytest.mark.parametrize("name", sorted(ROPE_CASES))
def test_mrope_positions_equal_stock_get_rope_index(stock, name):
    rows, mask, image_grid, video_grid = ROPE_CASES[name]
    ids, mask = mrope_case(rows, mask)
    if image_grid is None and video_grid is None and ROPE_CASES[name][1] is None:
        mask = None
    as_tensor = lambda array: None if array is None else mindspore.Tensor(np.array(array, np.int64))  # noqa: E731
    want_positions, want_deltas = stock.get_rope_index(as_tensor(ids), as_tensor(image_grid), as_tensor(video_grid),
                                                       as_tensor(mask))
    positions, deltas = mrope_positions(ids, mask, None if image_grid is None else np.array(image_grid),
                                        None if video_grid is None else np.array(video_grid),
                                        VisionTokens.from_config(stock.config))
    np.testing.assert_array_equal(positions, want_positions.asnumpy())
    np.testing.assert_array_equal(deltas, want_deltas.asnumpy().reshape(deltas.shape))


def test_mrope_positions_refuse_more_spans_than_grids(stock):
    ids, _ = mrope_case([[5] + span(IMAGE, 6) + [7] + span(IMAGE, 6)])
    with pytest.raises(ValueError, match="more image spans than grids"):
        mrope_positions(ids, None, np.array([[1, 4, 6]]), None, VisionTokens.from_config(stock.config))


def test_merge_policy_is_read_from_the_base():
    """The branch's stock casts through fp16 around the merge; the wheel's does not."""
    assert ours_module.stock_merge_round_trips() is BRANCH_BASE

    def branch_like(inputs_embeds, mindspore):
        inputs_embeds = inputs_embeds.astype(mindspore.float16)
        return inputs_embeds.astype(mindspore.bfloat16)

    def wheel_like(inputs_embeds):
        return inputs_embeds
    assert ours_module.merge_round_trips(branch_like) is True
    assert ours_module.merge_round_trips(wheel_like) is False
    assert ours_module.merge_round_trips(len) is None


def test_merge_rows_refuses_a_count_mismatch():
    embeds = mindspore.Tensor(np.zeros((1, 4, 2), np.float32))
    rows = mindspore.Tensor(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="2 vision token slots for 3"):
        ours_module.merge_rows(embeds, rows, np.array([[False, True, True, False]]))
    merged = ours_module.merge_rows(embeds, rows[:2] * mindspore.Tensor([[1.0, 2.0]]), np.array([[False, True, True, False]]))
    np.testing.assert_array_equal(merged.asnumpy()[0], [[0, 0], [1, 2], [1, 2], [0, 0]])


def test_half_precision_follows_stock_dtype_policy(fixture_path, processor):
    """fp16 (the CPU's stand-in for bf16): the vision tower, the merge and M-RoPE tables cast as stock
    casts them; on a branch base the fp16 round trip is the identity here, and fp32 shows it."""
    stock16 = stock_module.Qwen2VLForConditionalGeneration.from_pretrained(
        fixture_path, ms_dtype=mindspore.float16).set_train(False)
    ours16 = mindnlp.transformers.Qwen2VLForConditionalGeneration.from_pretrained(
        fixture_path, ms_dtype=mindspore.float16).set_train(False)
    assert isinstance(ours16, Ours) and ours16.lm_head.weight.dtype == mindspore.float16
    for _, case in judge.prompt_cases("qwen2_vl", None):
        inputs = judge.prepare_inputs("qwen2_vl", ours16, processor, case)
        kwargs = dict(**inputs, max_new_tokens=8, **GREEDY)
        assert_same_generation(stock_generate(stock16, **kwargs), ours16.generate(**kwargs))


def test_decode_makes_no_host_sync_and_prefill_reads_only_processor_data(ours, stock, processor):
    """After a first call (cache allocation, kernel checks), a prefill reads only the processor's host
    data (ids, mask and grid for the positions, the grid for the tower, the ids for the merge)."""
    inputs = vision_inputs(processor, ["Describe it."], [[cat()]])
    kwargs = dict(**inputs, max_new_tokens=6, eos_token_id=None, **GREEDY)
    ours.generate(**kwargs)
    ours_counts = counters.count_generate(ours, kwargs)
    with stock_qwen2_vl_on_cpu():
        stock_counts = counters.count_generate(stock, kwargs)
    assert ours_counts.decode_syncs == 0
    prefill_syncs = ours_counts.steps[0].syncs
    # the prompt's ids and mask (generation.step.first_state), the grid for the positions and for the
    # tower, the ids for the merge (qwen2_vl_positions.host_array): all host data the processor made
    prompt_reads = sum(count for where, count in prefill_syncs.items() if "accel/generation/step.py" in where)
    processor_reads = sum(count for where, count in prefill_syncs.items()
                          if "accel/models/qwen2_vl_positions.py" in where)
    assert (prompt_reads, processor_reads) == (2, 3), prefill_syncs
    assert ours_counts.steps[0].n_syncs == 5, prefill_syncs
    assert ours_counts.decode_ops < stock_counts.decode_ops
    assert ours_counts.steps[0].n_syncs < stock_counts.steps[0].n_syncs


def test_save_and_reload_gives_identical_logits(ours, processor, tmp_path):
    ours.save_pretrained(str(tmp_path))
    again = mindnlp.transformers.Qwen2VLForConditionalGeneration.from_pretrained(str(tmp_path)).set_train(False)
    inputs = vision_inputs(processor, ["Describe it."], [[cat()]])
    kwargs = dict(**inputs, max_new_tokens=4, **GREEDY)
    assert_same_generation(ours.generate(**kwargs), again.generate(**kwargs))


@pytest.mark.parametrize("override", [dict(rope_scaling={"type": "default", "rope_type": "default", "mrope_section": [1, 1, 1]}),
                                      dict(hidden_act="gelu")])
def test_unsupported_config_builds_stock(fixture_path, override):
    config = stock_module.Qwen2VLConfig.from_pretrained(fixture_path, **override)
    model = mindnlp.transformers.Qwen2VLForConditionalGeneration(config)
    assert type(model) is stock_module.Qwen2VLForConditionalGeneration


# Per decoder layer per decode token in fp32, each one of stock's own arithmetic steps: 2 RMSNorm
# composites (Pow, ReduceMean, Add, Rsqrt, 2 Mul: 12), the q/k/v MatMul and its bias Add, rotary (Mul,
# ReduceSum), the K/V cache write (ScatterUpdate), attention (BatchMatMul, RealDiv, Softmax, BatchMatMul;
# K/V repeated for the 6 query heads of a KV head by a broadcast, as stock's repeat_kv), o_proj, the
# gate/up MatMul, SiLU (Sigmoid, Mul), the gate-up Mul, down_proj and 2 residual Adds.
LAYER_LAUNCHES = 29


def test_decode_launches_per_layer_are_pinned(ours, processor):
    inputs = vision_inputs(processor, ["Describe it."], [[cat()]])
    counts = greedy_checks.launches_per_layer(ours, dict(**inputs, max_new_tokens=4, do_sample=False))
    assert counts == [LAYER_LAUNCHES] * ours.config.num_hidden_layers
