"""Janus-Pro's image side as ours builds it, on any base: the SigLIP tower and the aligner against a
float64 NumPy reference of stock's arithmetic (stock's q and k divisor, rounded in the activation
dtype, included), the image merge against stock's concatenation, the aligner's deferred inf/nan
check, the processor's cached special ids, and how install_vlm / install_processor wire a janus
module namespace (tests/test_janus.py runs the real janus package on a branch base).
"""
import types
import warnings

import ml_dtypes
import numpy as np
import pytest
from scipy.special import erf

import mindspore
from mindspore import Tensor
from mindnlp.core import nn, ops

from mindnlp.accel import device
from mindnlp.accel.layers.vision import stock_qk_divisor
from mindnlp.accel.models import janus, janus_vision

WIDTH, HEADS, MLP, PATCH, IMAGE, DEPTH = 128, 2, 256, 16, 32, 2  # head_dim 64, as SigLIP-L has
TOLERANCE = {mindspore.float32: dict(rtol=1e-4, atol=1e-5), mindspore.float16: dict(rtol=2e-2, atol=2e-2)}


def seeded(module, seed=0):
    """Random weights of a realistic scale in every parameter; returns name -> float64 array."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, param in module.named_parameters():
        shape = tuple(param.shape)
        if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias") or name == "pos_embed":
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        param.assign_value(Tensor(value.astype(np.float32)))
        arrays[name] = value
    return arrays


def layer_norm(x, w, b, eps=janus_vision.LAYER_NORM_EPS):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def linear(x, p, name):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_tower(p, images, divisor):
    """Stock's SigLIP forward in float64: Conv2d (kernel = stride) as patches times the kernel, the
    position embedding, pre-LN blocks with q and k each divided by `divisor`, the final LayerNorm."""
    batch, channels, height, width = images.shape
    grid_h, grid_w = height // PATCH, width // PATCH
    patches = images.reshape(batch, channels, grid_h, PATCH, grid_w, PATCH).transpose(0, 2, 4, 1, 3, 5)
    kernel = p["patch_embed.proj.weight"].reshape(WIDTH, -1)
    x = patches.reshape(batch, grid_h * grid_w, -1) @ kernel.T + p["patch_embed.proj.bias"] + p["pos_embed"]
    dim = WIDTH // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}"
        h = layer_norm(x, p[f"{b}.norm1.weight"], p[f"{b}.norm1.bias"])
        qkv = linear(h, p, f"{b}.attn.qkv").reshape(batch, -1, 3, HEADS, dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] / divisor, qkv[1] / divisor, qkv[2]
        attn = softmax(q @ k.swapaxes(-1, -2)) @ v
        x = x + linear(attn.swapaxes(1, 2).reshape(batch, -1, WIDTH), p, f"{b}.attn.proj")
        h = layer_norm(x, p[f"{b}.norm2.weight"], p[f"{b}.norm2.bias"])
        x = x + linear(gelu(linear(h, p, f"{b}.mlp.fc1")), p, f"{b}.mlp.fc2")
    return layer_norm(x, p["norm.weight"], p["norm.bias"])


def test_stock_divisor_is_rounded_in_the_activation_dtype():
    assert stock_qk_divisor(64, mindspore.float16) == 2.828125
    assert stock_qk_divisor(64, mindspore.float32) == float(np.sqrt(np.sqrt(np.float32(64))))
    assert stock_qk_divisor(64, mindspore.float32) != 2.828125


def test_stock_divisor_in_bf16():
    if mindspore.get_context("device_target") == "CPU":
        pytest.skip("the CPU backend has no bf16 Sqrt kernel; the judge's dtype is checked on the device")
    assert stock_qk_divisor(64, mindspore.bfloat16) == float(ml_dtypes.bfloat16(np.sqrt(8.0))) == 2.828125


@pytest.mark.parametrize("dtype", [mindspore.float32, mindspore.float16])
def test_tower_matches_the_float64_reference(dtype):
    tower = janus_vision.SiglipViT(IMAGE, PATCH, WIDTH, DEPTH, HEADS, MLP)
    params = seeded(tower)
    images = np.random.default_rng(1).standard_normal((2, 3, IMAGE, IMAGE))
    tower = tower.to(dtype)
    device.prepare_kernels(tower, dtype, 2)
    got = tower(Tensor(images.astype(np.float32)).to(dtype)).astype(mindspore.float32).asnumpy()
    expected = reference_tower(params, images, stock_qk_divisor(WIDTH // HEADS, dtype))
    assert got.shape == (2, (IMAGE // PATCH) ** 2, WIDTH)
    np.testing.assert_allclose(got, expected, **TOLERANCE[dtype])


def test_aligner_matches_the_float64_reference():
    aligner = janus_vision.build_aligner({"projector_type": "mlp_gelu", "input_dim": WIDTH, "n_embed": 64, "depth": 2})
    params = seeded(aligner)
    assert sorted(params) == ["layers.0.bias", "layers.0.weight", "layers.2.bias", "layers.2.weight"]
    x = np.random.default_rng(2).standard_normal((1, 5, WIDTH))
    got = aligner(Tensor(x.astype(np.float32))).asnumpy()
    expected = linear(gelu(linear(x, params, "layers.0")), params, "layers.2")
    np.testing.assert_allclose(got, expected, **TOLERANCE[mindspore.float32])


def test_the_finite_check_warns_later_and_only_when_stock_would_print():
    check = janus_vision.DeferredFiniteCheck("probe")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(ops.ones(4, 4))
        check(Tensor(np.array([1.0, 1e5], np.float32)))  # finite in fp32, inf once cast to fp16 as stock casts
        assert not caught  # the inf is in the pending flags, not yet read
        check(Tensor(np.array([np.nan, 0.0], np.float32)))
        assert [str(w.message) for w in caught] == ["mindnlp.accel: probe input has inf (as fp16)"]
        check.report()
    assert [str(w.message) for w in caught][1:] == ["mindnlp.accel: probe input has nan (as fp16)"]


@pytest.mark.parametrize("start", [0, 3, 6])
def test_merge_equals_stocks_concatenation(start):
    rng = np.random.default_rng(start)
    length, rows, dim = 10, 4, 6
    text = rng.standard_normal((1, length, dim)).astype(np.float32)
    image = rng.standard_normal((rows, dim)).astype(np.float32)
    mask = np.zeros((1, length), bool)
    mask[0, start:start + rows] = True
    got = janus.merge_image_embeds(Tensor(text), Tensor(image), Tensor(mask)).asnumpy()
    expected = np.concatenate([text[:, :start], image[None], text[:, start + rows:]], axis=1)
    assert np.array_equal(got, expected)


def fake_model(dtype=mindspore.float32):
    embeddings = types.SimpleNamespace(weight=types.SimpleNamespace(dtype=dtype))
    return types.SimpleNamespace(language_model=types.SimpleNamespace(get_input_embeddings=lambda: embeddings))


@pytest.mark.parametrize("pixels,mask,reason", [
    ((2, 1), mindspore.bool_, "2 sequences with 1 images"),
    ((1, 2), mindspore.bool_, "1 sequences with 2 images"),
    ((1, 1), mindspore.int64, "images_seq_mask of dtype"),
])
def test_merge_refuses_what_it_would_get_wrong(pixels, mask, reason):
    pixel_values = ops.zeros(pixels + (3, 4, 4))
    assert reason in janus.merge_unsupported(fake_model(), pixel_values, ops.zeros((1, 3), dtype=mask))


def test_merge_takes_one_image_in_the_embeddings_dtype():
    one_image, mask = ops.zeros((1, 1, 3, 4, 4)), ops.zeros((1, 3), dtype=mindspore.bool_)
    assert janus.merge_unsupported(fake_model(mindspore.float16), one_image, mask).startswith("pixel values")
    assert janus.merge_unsupported(fake_model(), one_image, mask) is None


@pytest.mark.parametrize("select_layer,depth", [(-1, 24), (-2, 23), (1, 1), (2, 2), (30, 24)])
def test_depth_follows_select_layer_as_janus_counts_it(select_layer, depth):
    assert janus_vision.siglip_depth(select_layer) == depth


SIGLIP = dict(model_name="siglip_large_patch16_384", image_size=384, select_feature="same", select_layer=1)


@pytest.mark.parametrize("change,reason", [
    ({"model_name": "siglip_so400m_patch14_384"}, "vision model"),
    ({"pixel_mean": [0.5] * 3, "pixel_std": [0.5] * 3}, "pixel_mean"),
    ({"select_layers": [1, 2]}, "select_layers"),
    ({"ckpt_path": "x.ckpt"}, "ckpt_path"),
    ({"ignore_head": False}, "ignore_head"),
    ({"image_size": 390}, "image size"),
    ({"image_size": (384, 384)}, "image size"),
    ({"select_layer": -25}, "no block left"),
    ({"dynamic_img_size": True}, "tower parameters"),
])
def test_tower_refuses_configs_it_does_not_implement(change, reason):
    assert janus_vision.tower_unsupported(SIGLIP) is None
    assert reason in janus_vision.tower_unsupported({**SIGLIP, **change})


class StockTower:
    def __init__(self, **params):
        self.params = params


class StockProjector:
    def __init__(self, cfg):
        self.cfg = cfg


class StockModel(nn.Module):
    """Stands in for janus's MultiModalityCausalLM: records what the stock methods receive."""
    base_model_prefix = "multi_modality"
    received = []

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)

    def prepare_inputs_embeds(self, *args, **kwargs):
        return "stock merge"

    @classmethod
    def _load_pretrained_model(cls, model, state_dict, loaded_keys, *args, **kwargs):
        cls.received.append(("load", cls, list(loaded_keys)))
        return model, [], [], [], {}

    def save_pretrained(self, save_directory, state_dict=None, **kwargs):
        self.received.append(("save", sorted(state_dict)))


def vlm_namespace():
    model_class = type("MultiModalityCausalLM", (StockModel,), {})
    return {"CLIPVisionTower": StockTower, "MlpProjector": StockProjector, "MultiModalityCausalLM": model_class}


def test_install_vlm_builds_ours_where_supported_and_stock_elsewhere(monkeypatch):
    monkeypatch.delenv("MINDNLP_ACCEL", raising=False)
    namespace = vlm_namespace()
    janus.install_vlm(namespace)
    assert isinstance(namespace["CLIPVisionTower"](**SIGLIP), janus_vision.SiglipVisionTower)
    stock_tower = namespace["CLIPVisionTower"](**{**SIGLIP, "model_name": "siglip_so400m_patch14_384"})
    assert isinstance(stock_tower, StockTower) and stock_tower.params["model_name"] == "siglip_so400m_patch14_384"
    cfg = {"projector_type": "mlp_gelu", "input_dim": 8, "n_embed": 4, "depth": 2}
    assert isinstance(namespace["MlpProjector"](cfg), janus_vision.MlpGeluAligner)
    assert isinstance(namespace["MlpProjector"]({**cfg, "projector_type": "linear"}), StockProjector)
    model_class = namespace["MultiModalityCausalLM"]
    assert model_class.prepare_inputs_embeds is not StockModel.prepare_inputs_embeds
    # a batch ours does not merge goes to stock's method
    model = model_class()
    assert model.prepare_inputs_embeds(None, ops.zeros((2, 1, 3, 4, 4)), None, None) == "stock merge"
    first = namespace["CLIPVisionTower"]
    janus.install_vlm(namespace)  # a second install changes nothing
    assert namespace["CLIPVisionTower"] is first


def test_install_vlm_loads_and_saves_through_the_checkpoint_names(monkeypatch):
    monkeypatch.delenv("MINDNLP_ACCEL", raising=False)
    namespace = vlm_namespace()
    janus.install_vlm(namespace)
    model_class = namespace["MultiModalityCausalLM"]
    subclass = type("Sub", (model_class,), {})
    StockModel.received.clear()
    model = subclass()
    assert subclass._load_pretrained_model(model, {}, ["proj.weight", "proj.bias"])[0] is model
    with pytest.raises(ValueError, match="low_cpu_mem_usage"):  # the slot-aware loader is in the way
        subclass._load_pretrained_model(model, {}, [], low_cpu_mem_usage=True)
    model.save_pretrained("unused")
    assert StockModel.received == [("load", subclass, ["proj.weight", "proj.bias"]),
                                   ("save", ["proj.bias", "proj.weight"])]


def test_install_does_nothing_with_accel_off(monkeypatch):
    monkeypatch.setenv("MINDNLP_ACCEL", "0")
    namespace = vlm_namespace()
    before = dict(namespace)
    janus.install_vlm(namespace)
    assert namespace == before and namespace["MultiModalityCausalLM"].prepare_inputs_embeds is StockModel.prepare_inputs_embeds


class CountingTokenizer:
    def __init__(self):
        self.table = {"<image_placeholder>": 100581, "<begin_of_image>": 100016, "<end_of_image>": 100593,
                      "<pad>": 100015}
        self.reads = 0

    @property
    def vocab(self):
        self.reads += 1
        return dict(self.table)

    def __len__(self):
        return len(self.table)


class StockProcessor:
    image_tag, image_start_tag, image_end_tag, pad_tag = "<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<pad>"

    def __init__(self):
        self.tokenizer = CountingTokenizer()

    image_id = image_start_id = image_end_id = pad_id = property(lambda self: None)


def test_processor_ids_are_looked_up_once_per_tokenizer_size(monkeypatch):
    monkeypatch.delenv("MINDNLP_ACCEL", raising=False)
    namespace = {"VLChatProcessor": type("VLChatProcessor", (StockProcessor,), {})}
    janus.install_processor(namespace)
    processor = namespace["VLChatProcessor"]()
    for _ in range(3):
        assert (processor.image_id, processor.image_start_id, processor.image_end_id, processor.pad_id) == \
            (100581, 100016, 100593, 100015)
    assert processor.tokenizer.reads == 4
    processor.tokenizer.table["<image_placeholder>"] = 5  # a retokenised tag, with a token added
    processor.tokenizer.table["<new>"] = 6
    assert processor.image_id == 5 and processor.tokenizer.reads == 5


def test_the_cpu_stand_in_for_mint_norm_computes_the_norm_and_is_restored():
    import janus_cpu_shims

    original = mindspore.mint.norm
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    with janus_cpu_shims.janus_on_cpu():
        got = mindspore.mint.norm(Tensor(x), 2.0, -1, True).asnumpy()
    assert mindspore.mint.norm is original
    np.testing.assert_allclose(got, np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-6)


def test_the_tower_and_aligner_as_one_graph_equal_pynative(monkeypatch):
    """janus_vision.image_embeddings: the tower and the aligner as one graph per image shape, checked
    against PyNative on its first images; the aligner's finite check comes out of the graph."""
    from mindnlp.accel.graphs import JIT_ENV

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model = janus_vision.SiglipVisionTower(IMAGE, DEPTH)
            self.aligner = janus_vision.build_aligner({"projector_type": "mlp_gelu", "input_dim": 1024,
                                                       "n_embed": 64, "depth": 2})

    model = Model()
    images = Tensor(np.random.default_rng(3).standard_normal((1, 3, IMAGE, IMAGE)).astype(np.float32))
    monkeypatch.setenv(JIT_ENV, "0")
    want = janus_vision.image_embeddings(model, images).asnumpy()
    model.__dict__.pop("_compiled_towers")
    monkeypatch.setenv(JIT_ENV, "1")
    first = janus_vision.image_embeddings(model, images).asnumpy()
    pending = list(janus_vision.ALIGNER_CHECK._pending)
    again = janus_vision.image_embeddings(model, images).asnumpy()
    graphs = model.__dict__["_compiled_towers"]
    assert graphs.verdict == "adopted" and graphs.compiles == 1
    np.testing.assert_array_equal(first, want)
    np.testing.assert_allclose(again, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert len(pending) == 1 and pending[0].asnumpy().tolist() == [False, False]
