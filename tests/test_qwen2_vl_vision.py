"""Our Qwen2-VL vision tower against stock's Qwen2VisionTransformerPretrainedModel (same weights) and
against a float64 NumPy reference of stock's arithmetic; its launches and host reads.

One image is bit-identical to stock in fp32 and fp16: there stock's mask is all zeros and ours
leaves it out. With several images (or video frames) ours attends per image where stock masks one
S x S attention: the same nonzero terms, but stock's softmax and probs @ v reduce rows of S terms
(the other images' probabilities are exact zeros) and ours rows of one image's length, which this
CPU's vectorised kernels sum in another order, so the test bounds the difference there.
"""
import math

import numpy as np
import pytest

import mindspore
from mindnlp.core import no_grad
from mindnlp.transformers.models.qwen2_vl import modeling_qwen2_vl as stock_module

import counters
import fixtures
from greedy_checks import FIXTURES
from mindnlp.accel.models.qwen2_vl_positions import frame_spans, patch_order
from mindnlp.accel.models.qwen2_vl_vision import VisionTower

GRIDS = {"one image": [[1, 16, 24]], "two images": [[1, 16, 24], [1, 8, 12]], "video": [[2, 8, 8]]}
# Bound on several images' difference from stock, relative to the largest |output|. Measured on the
# AVX2 host for two images, both fixtures: 4.1e-7 (fp32) and 6.7e-4 (fp16); a video's equal frames: 0.
SEVERAL_IMAGES_BOUND = {mindspore.float32: 2e-6, mindspore.float16: 4e-3}


@pytest.fixture(scope="module", params=["tiny", "mixed"])
def vision_config(request):
    path = fixtures.ensure("qwen2_vl", request.param, FIXTURES)
    return stock_module.Qwen2VLConfig.from_pretrained(path).vision_config


@pytest.fixture(scope="module")
def towers(vision_config):  # pylint: disable=redefined-outer-name
    """(stock, ours) with the same random weights (stock's init)."""
    mindspore.set_seed(0)
    stock = stock_module.Qwen2VisionTransformerPretrainedModel._from_config(vision_config).set_train(False)
    ours = VisionTower(vision_config).set_train(False)
    ours.load_state_dict(stock.state_dict(), strict=True)
    return stock, ours


def pixels(grid, seed=0):
    patches = int(np.prod(grid, -1).sum())
    return np.random.default_rng(seed).standard_normal((patches, 3 * 2 * 14 * 14)).astype(np.float32)


def run(tower, grid, dtype):
    with no_grad():
        out = tower.to(dtype)(mindspore.Tensor(pixels(grid)).to(dtype), mindspore.Tensor(np.array(grid)))
    return out.float().asnumpy()


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_tower_equals_stock(towers, name, dtype):  # pylint: disable=redefined-outer-name
    stock, ours = towers
    grid = GRIDS[name]
    want, got = run(stock, grid, dtype), run(ours, grid, dtype)
    if len(frame_spans(np.array(grid))) > 1:
        np.testing.assert_allclose(got, want, rtol=0, atol=SEVERAL_IMAGES_BOUND[dtype] * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)


def reference_tower(state, config, pixel_values, grid):
    """Stock's arithmetic in float64 NumPy: the Conv3d (kernel = stride) as a matmul, pre-LN blocks
    with 2-D rotary q and k, attention masked to each frame, quick_gelu, the patch merger."""
    w = {name: value.astype(np.float64) for name, value in state.items()}
    heads = config.num_heads
    dim = config.embed_dim // heads

    def linear(x, name):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def layer_norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-6) * w[f"{name}.weight"] + w[f"{name}.bias"]

    x = pixel_values.astype(np.float64) @ w["patch_embed.proj.weight"].reshape(config.embed_dim, -1).T
    tokens = x.shape[0]
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, dim // 2, 2) / (dim // 2))
    order = patch_order(np.array(grid), config.spatial_merge_size)
    angles = (order[:, :, None] * inv_freq[None, None, :]).reshape(tokens, -1)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))

    def rotate(t):  # [S, heads, dim]
        half = np.concatenate([-t[..., dim // 2:], t[..., :dim // 2]], -1)
        return t * cos[:, None] + half * sin[:, None]

    frame = np.zeros(tokens, int)
    for index, (start, stop) in enumerate(frame_spans(np.array(grid))):
        frame[start:stop] = index
    hidden_mask = frame[:, None] != frame[None, :]
    for i in range(config.depth):
        block = f"blocks.{i}"
        q, k, v = linear(layer_norm(x, f"{block}.norm1"), f"{block}.attn.qkv").reshape(tokens, 3, heads, dim).transpose(1, 2, 0, 3)
        q, k = rotate(q.transpose(1, 0, 2)).transpose(1, 0, 2), rotate(k.transpose(1, 0, 2)).transpose(1, 0, 2)
        scores = np.where(hidden_mask, -np.inf, q @ k.transpose(0, 2, 1) / math.sqrt(dim))
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        out = (probs / probs.sum(-1, keepdims=True)) @ v
        x = x + linear(out.transpose(1, 0, 2).reshape(tokens, -1), f"{block}.attn.proj")
        h = linear(layer_norm(x, f"{block}.norm2"), f"{block}.mlp.fc1")
        x = x + linear(h / (1 + np.exp(-1.702 * h)), f"{block}.mlp.fc2")
    h = linear(layer_norm(x, "merger.ln_q").reshape(tokens // config.spatial_merge_size ** 2, -1), "merger.mlp.0")
    from math import erf
    h = h * 0.5 * (1 + np.vectorize(erf)(h / math.sqrt(2)))
    return linear(h, "merger.mlp.2")


@pytest.mark.parametrize("dtype,tolerance", [(mindspore.float32, 1e-4), (mindspore.float16, 3e-2)])
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_tower_matches_float64_reference(towers, vision_config, name, dtype, tolerance):  # pylint: disable=redefined-outer-name
    _, ours = towers
    grid = GRIDS[name]
    state = {key: value.float().asnumpy() for key, value in ours.to(mindspore.float32).state_dict().items()}
    want = reference_tower(state, vision_config, pixels(grid), grid)
    got = run(ours, grid, dtype)
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())


def test_tower_has_fewer_launches_and_reads_the_grid_once(towers):  # pylint: disable=redefined-outer-name
    stock, ours = towers
    grid = GRIDS["two images"]
    counts = {}
    for name, tower in (("stock", stock), ("ours", ours)):
        run(tower, grid, mindspore.float32)  # warm
        with counters.count_region() as region:
            run(tower, grid, mindspore.float32)
        counts[name] = region.counts.steps[0]
    depth = len(ours.blocks)
    # per block: LayerNorm x2, qkv/proj/fc1/fc2 (MatMul + bias Add each), rotary (Mul, ReduceSum), per image
    # (BatchMatMul, RealDiv, Softmax, BatchMatMul) and their Concat, quick_gelu (Mul, Sigmoid, Mul), 2 residual Adds
    assert counts["ours"].n_ops < counts["stock"].n_ops * 0.7
    assert counts["ours"].n_syncs == 2  # the grid, and the run's own read of the output
    assert counts["stock"].n_syncs > counts["ours"].n_syncs + depth


def test_patch_embedding_as_one_matmul_is_the_conv3d_product(towers):  # pylint: disable=redefined-outer-name
    """The Ascend candidate computes stock's Conv3d product (in another summation order: on this CPU
    the Conv3d keeps serving, as device.choose leaves the twin off Ascend)."""
    _, ours = towers
    embed = ours.to(mindspore.float32).patch_embed
    x = mindspore.Tensor(pixels([[1, 4, 4]]))
    conv, matmul = embed.conv(x).asnumpy(), embed.matmul(x).asnumpy()
    np.testing.assert_allclose(matmul, conv, rtol=0, atol=1e-5 * np.abs(conv).max())
    embed.prepare_kernels(mindspore.float32, 1)
    np.testing.assert_array_equal(embed(x).asnumpy(), conv)


def test_count_script_reports_both_towers(capsys):
    import count_vision_tower

    count_vision_tower.main(["--size", "tiny", "--grid", "1,4,4", "--grid", "1,4,8"])
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    launches = {name: int(lines[name].split()[0]) for name in ("stock", "ours")}
    assert 0 < launches["ours"] < launches["stock"]
    assert "2 image(s), 48 patches, 2 blocks" in lines["ours"]


def test_query_chunks_fit_the_budget_and_never_leave_one_row():
    from mindnlp.accel.layers.vision import SCORES_BUDGET_BYTES, query_chunks

    for queries in (1, 2, 37, 3996, 4097):
        chunks = query_chunks(queries, queries, 16, mindspore.float32)
        assert [start for start, _ in chunks] == list(np.cumsum([0] + [rows for _, rows in chunks])[:-1])
        assert sum(rows for _, rows in chunks) == queries
        assert all(rows > 1 for _, rows in chunks) or queries == 1
        assert all(16 * queries * rows * 12 <= SCORES_BUDGET_BYTES for _, rows in chunks) or len(chunks) == 1
    budget_rows = SCORES_BUDGET_BYTES // (16 * 3996 * 12)
    assert query_chunks(budget_rows * 2 + 1, 3996, 16, mindspore.float32)[-1][1] == 2  # not a chunk of one row


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
def test_attention_in_query_chunks_is_one_calls_attention_bit_for_bit(dtype):
    """On this CPU a split of the query rows (none of one row) gives each row the bits of one call:
    the PyNative tower takes its queries in chunks here (layers.vision.chunking_exact)."""
    from mindnlp.accel.layers.vision import attend_in_chunks, chunking_exact

    rng = np.random.default_rng(1)
    q, k, v = (mindspore.Tensor(rng.standard_normal((4, 1000, 16)).astype(np.float32)).to(dtype) for _ in range(3))
    whole = attend_in_chunks(q, k, v, [(0, 1000)]).asnumpy()
    for chunks in ([(0, 333), (333, 333), (666, 334)], [(0, 998), (998, 2)]):
        np.testing.assert_array_equal(attend_in_chunks(q, k, v, chunks).asnumpy(), whole)
    assert chunking_exact(dtype, 4, 16)


def test_key_bias_attention_hides_the_padding_and_stays_close_to_the_images_own():
    from mindnlp.accel.layers.vision import attend_in_chunks, attend_keys_in_chunks

    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((4, 96, 16)).astype(np.float32) for _ in range(3))
    bias = np.zeros(96, np.float32)
    bias[80:] = -np.inf
    k[:, 80:] *= 1e3  # padding keys that would dominate any row that saw them
    got = attend_keys_in_chunks(*(mindspore.Tensor(a) for a in (q, k, v, bias)), [(0, 40), (40, 56)]).asnumpy()
    want = attend_in_chunks(*(mindspore.Tensor(a[:, :80]) for a in (q, k, v)), [(0, 80)]).asnumpy()
    np.testing.assert_allclose(got[:, :80], want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_a_compiled_tower_equals_pynative_and_several_images_stay_in_pynative(towers, monkeypatch):
    """One image padded to its bucket, as one graph (qwen2_vl_tower_graph): within the graphs' bound
    of PyNative, compiled once for its bucket and the larger ones; two images attend apart, in PyNative."""
    from mindnlp.accel.graphs import JIT_ENV
    from mindnlp.accel.models import qwen2_vl_tower_graph

    _, ours = towers
    ours = ours.to(mindspore.float32)
    monkeypatch.setenv(qwen2_vl_tower_graph.BUCKETS.env, "256,512")
    for grid in (GRIDS["one image"], [[1, 10, 12]], GRIDS["two images"]):
        monkeypatch.setenv(JIT_ENV, "0")
        ours.__dict__.pop("_compiled_towers", None)
        want = run(ours, grid, mindspore.float32)
        monkeypatch.setenv(JIT_ENV, "1")
        ours.__dict__.pop("_compiled_towers", None)
        ours.__dict__.pop("_accel_buckets_compiled", None)
        first, again = run(ours, grid, mindspore.float32), run(ours, grid, mindspore.float32)
        graphs = qwen2_vl_tower_graph.compiled_towers(ours)
        np.testing.assert_array_equal(first, want)  # the first call is PyNative's, after the check
        if len(grid) == 1:
            assert graphs.verdict == "adopted" and graphs.compiles == (2 if np.prod(grid) <= 256 else 1)
            np.testing.assert_allclose(again, want, rtol=0, atol=1e-5 * np.abs(want).max())
        else:
            assert graphs.compiles == 0
            np.testing.assert_array_equal(again, want)
