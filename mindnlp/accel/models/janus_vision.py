"""Janus-Pro's image side: the SigLIP-L/16 tower and the MLP aligner, on the shared vision layers.

Checkpoint names are those of Janus's own modules (`vision_model.vision_tower.blocks.N.attn.qkv`,
`aligner.layers.0` ...), so `from_pretrained` loads a Janus checkpoint into these unchanged. The
tower's attention pooling head (`attn_pool`) is built, loaded and never run by stock
(ignore_head); it is not built here, and its checkpoint tensors are reported as unused.
The patch embedding stays stock's Conv2d (kernel = stride = 16): as a matmul it would take as many
launches (a copy to gather the patches, then the matmul) and sum each patch in another order.
"""
import atexit
import warnings
from typing import Optional

import numpy as np
import mindspore
from mindnlp.core import nn, ops

from .. import device
from ..graphs import GraphSet
from ..graphs.trust import values_disagree
from ..layers.vision import VisionAttention, VisionBlock

# siglip_large_patch16_384, the only tower Janus-Pro uses (Janus fixes it by model name).
SIGLIP_LARGE = dict(width=1024, layers=24, heads=16, patch=16, mlp_ratio=4)
SIGLIP_LARGE_NAME = "siglip_large_patch16_384"
LAYER_NORM_EPS = 1e-6
# CLIPVisionTower's defaults for the parameters a config may leave out.
DEFAULT_IMAGE_SIZE, DEFAULT_SELECT_LAYER = 336, -2


class PatchEmbed(nn.Module):
    """[B, 3, H, W] -> [B, (H / p) * (W / p), width] by stock's Conv2d, flattened as stock does."""

    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(start_dim=2).swapaxes(1, 2)


class SiglipViT(nn.Module):
    """Patch embedding + position embedding, `depth` pre-LN blocks, the final LayerNorm."""

    def __init__(self, image_size: int, patch: int, width: int, depth: int, heads: int, mlp_hidden: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        self.patch_embed = PatchEmbed(patch, width)
        self.pos_embed = nn.Parameter(ops.zeros(1, (image_size // patch) ** 2, width))
        self.blocks = nn.ModuleList([VisionBlock(width, VisionAttention(width, heads), mlp_hidden, LAYER_NORM_EPS)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, images):
        x = self.patch_embed(images) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class SiglipVisionTower(nn.Module):
    """Stands in for Janus's CLIPVisionTower with a SigLIP model: images [B, 3, H, W] -> [B, patches, width]."""

    def __init__(self, image_size: int, depth: int):
        super().__init__()
        cfg = SIGLIP_LARGE
        self.vision_tower = SiglipViT(image_size, cfg["patch"], cfg["width"], depth, cfg["heads"],
                                      cfg["width"] * cfg["mlp_ratio"])

    def forward(self, images):
        device.prepare_kernels(self, images.dtype, images.shape[0])
        return self.vision_tower(images)


def siglip_depth(select_layer: int) -> int:
    """The blocks Janus keeps: all but the last -select_layer - 1 for select_layer <= 0, else
    select_layer of them (at most the model's 24)."""
    layers = SIGLIP_LARGE["layers"]
    return min(layers, layers + select_layer + 1) if select_layer <= 0 else min(layers, select_layer)


def tower_unsupported(params: dict) -> Optional[str]:
    """Why ours cannot stand in for CLIPVisionTower(**params), or None."""
    if params.get("model_name", "siglip_large_patch16_384") != SIGLIP_LARGE_NAME:
        return f"vision model {params.get('model_name')!r} (only {SIGLIP_LARGE_NAME} is implemented)"
    if params.get("pixel_mean") is not None and params.get("pixel_std") is not None:
        return "pixel_mean/pixel_std normalisation inside the tower"
    if params.get("select_layers") is not None:
        return "select_layers"
    if params.get("ckpt_path"):
        return "ckpt_path"
    extra = set(params) - {"model_name", "image_size", "select_feature", "select_layer", "select_layers",
                           "ckpt_path", "pixel_mean", "pixel_std", "ignore_head", "weight_init"}
    if extra:
        return f"tower parameters {sorted(extra)}"
    if not params.get("ignore_head", True):
        return "ignore_head False (the attention-pooling head run)"
    size = params.get("image_size", DEFAULT_IMAGE_SIZE)
    if not isinstance(size, int) or size % SIGLIP_LARGE["patch"]:
        return f"image size {size!r} (ours takes a square size, a multiple of {SIGLIP_LARGE['patch']})"
    if siglip_depth(params.get("select_layer", DEFAULT_SELECT_LAYER)) < 1:
        return f"select_layer {params.get('select_layer')} (no block left)"
    return None


def build_tower(**params) -> SiglipVisionTower:
    """Ours from CLIPVisionTower's keyword parameters (check tower_unsupported first). A SigLIP tower
    returns every patch ("same" features) whatever select_feature says, as stock's does."""
    return SiglipVisionTower(params.get("image_size", DEFAULT_IMAGE_SIZE),
                             siglip_depth(params.get("select_layer", DEFAULT_SELECT_LAYER)))


def finite_flags(x):
    """bool [2]: whether x, cast to fp16 as stock's aligner checks it, holds an inf, a nan."""
    half = x.astype(mindspore.float16)
    return ops.stack((mindspore.ops.isinf(half).any(), mindspore.ops.isnan(half).any()))


class DeferredFiniteCheck:
    """Stock's aligner checks its input for inf and nan (after a cast to fp16) on every call and prints
    when it finds one; the output does not depend on it. Kept here as a warning with the same
    meaning, but the flags are read on the host only at the next call or at exit, when the device
    has long finished them: the call itself never waits for the device."""

    def __init__(self, label: str):
        self.label = label
        self._pending = []
        atexit.register(self.report)

    def __call__(self, x) -> None:
        self.defer(finite_flags(x))

    def defer(self, flags) -> None:
        """Keep finite_flags' result to be read later."""
        self.report()
        self._pending.append(flags)

    def report(self) -> None:
        pending, self._pending = self._pending, []
        for flags in pending:
            has_inf, has_nan = (bool(v) for v in flags.asnumpy())
            for found, what in ((has_inf, "inf"), (has_nan, "nan")):
                if found:
                    warnings.warn(f"mindnlp.accel: {self.label} input has {what} (as fp16)", RuntimeWarning)


ALIGNER_CHECK = DeferredFiniteCheck("MlpProjector")


class MlpGeluAligner(nn.Module):
    """Janus's MlpProjector of type mlp_gelu: Linear, then (GELU, Linear) depth - 1 times; names
    layers.0, layers.2 ... as stock's Sequential has them."""

    def __init__(self, input_dim: int, n_embed: int, depth: int):
        super().__init__()
        modules = [nn.Linear(input_dim, n_embed)]  # stock's module: see layers/vision.py on Linear
        for _ in range(1, depth):
            modules += [nn.GELU(), nn.Linear(n_embed, n_embed)]
        self.layers = nn.ModuleList(modules)

    def forward(self, x):
        ALIGNER_CHECK(x)
        return self.project(x)

    def project(self, x):
        """The projection alone (the finite check apart)."""
        for layer in self.layers:
            x = layer(x)
        return x


def image_embeddings(model, images):
    """model.aligner(model.vision_model(images)) for images [B, 3, H, W], ours both: the tower and the
    projection as one graph per image shape where graphs are on and it agreed with PyNative once
    (graphs.GraphSet, scope "graph"), the aligner's finite check kept as an output of the graph."""
    vision, aligner = model.vision_model, model.aligner
    if not isinstance(vision, SiglipVisionTower) or not isinstance(aligner, MlpGeluAligner):
        return aligner(vision(images))

    def embed(pixels):
        features = vision(pixels)
        return aligner.project(features), finite_flags(features)

    graphs = model.__dict__.get("_compiled_towers")
    if graphs is None:
        graphs = model.__dict__["_compiled_towers"] = GraphSet("vision tower", trust_runs=1, scope="graph")
    if not graphs.usable:
        out, flags = embed(images)
    else:
        device.prepare_kernels(vision, images.dtype, images.shape[0])  # its self-checks read the host: not in a trace
        entry = graphs.entry(model, (tuple(images.shape), images.dtype), embed, f"images {tuple(images.shape)}")
        out, flags = graphs.run(entry, (images,), lambda: embed(images), _disagreement)
    ALIGNER_CHECK.defer(flags)
    return out


def _disagreement(compiled, eager):
    if not np.array_equal(compiled[1].asnumpy(), eager[1].asnumpy()):
        return "found other infs or nans than PyNative"
    return values_disagree(compiled[0], eager[0], "image embeddings")


def aligner_unsupported(cfg) -> Optional[str]:
    """Why ours cannot stand in for MlpProjector(cfg), or None."""
    if cfg.get("projector_type") != "mlp_gelu":
        return f"projector type {cfg.get('projector_type')!r} (only mlp_gelu is implemented)"
    if cfg.get("depth", 1) < 1:
        return f"projector depth {cfg.get('depth')}"
    return None


def build_aligner(cfg) -> MlpGeluAligner:
    return MlpGeluAligner(cfg["input_dim"], cfg["n_embed"], cfg.get("depth", 1))
