"""Qwen2-VL's vision tower as one graph per bucket of patches, used once it agreed with PyNative.

A graph is specialised to its shapes and an image's patch count varies, so one image's patches are
padded with zeros to the smallest bucket that holds them (graphs.buckets: the first image compiles
its bucket and every larger one), the image's patches never see the padding's (a key bias of -inf,
VisionTower.forward_masked), and the padding's merged rows are dropped. Hidden keys add exact zeros,
but rows of another length may sum in another order than PyNative's attention, so a bucket's graph
serves only after it agreed with PyNative on the first image it got, within
graphs.trust.values_disagree's bound; a disagreement keeps that bucket in PyNative, with one warning
(scope "graph"). Several images (or a video's frames) attend apart: they run in PyNative, as do more
patches than the largest bucket (with one info line).
MINDNLP_ACCEL_TOWER_BUCKETS overrides the buckets (comma-separated patch counts, multiples of 4).
"""
import logging

import numpy as np
import mindspore
from mindnlp.core import ops

from .. import device
from ..graphs import GraphSet
from ..graphs.buckets import Buckets
from ..graphs.trust import values_disagree
from ..layers.primitives import narrow
from .qwen2_vl_positions import frame_spans, patch_order

# The judge's pictures have 280 (its warm-up), 1296 and 3996 patches.
BUCKETS = Buckets("MINDNLP_ACCEL_TOWER_BUCKETS", (256, 512, 1024, 1536, 2048, 3072, 4096))

logger = logging.getLogger("mindnlp.accel")


def compiled_towers(tower) -> GraphSet:
    """The tower's graphs, made on first use."""
    found = tower.__dict__.get("_compiled_towers")
    if found is None:
        found = tower.__dict__["_compiled_towers"] = GraphSet("vision tower", trust_runs=1, scope="graph")
    return found


def run(tower, pixel_values, grid: np.ndarray):
    """tower's rows for pixel_values [S, C * T * P * P] of the images `grid` (host [images, 3])."""
    graphs = compiled_towers(tower)
    patches = pixel_values.shape[0]
    bucket = BUCKETS.fitting(patches)
    if not graphs.usable or bucket is None or len(frame_spans(grid)) != 1:
        if graphs.usable and bucket is None:
            logger.info("mindnlp.accel: %d patches are more than the largest vision tower bucket (%d): the tower "
                        "runs in PyNative", patches, BUCKETS.largest())
        return tower.forward_spans(pixel_values, grid)
    device.prepare_kernels(tower, pixel_values.dtype, 1)  # its self-checks read the host: not in a trace
    for larger in BUCKETS.first_compiles(tower, patches):
        _run_bucket(tower, graphs, larger, pixel_values, grid)
    return _run_bucket(tower, graphs, bucket, pixel_values, grid)


def _run_bucket(tower, graphs, bucket: int, pixel_values, grid: np.ndarray):
    patches, width = pixel_values.shape
    if bucket % 4:
        raise ValueError(f"vision tower bucket {bucket} is not a multiple of 4 patches (2 x 2 merge windows)")
    padded = pixel_values
    if bucket > patches:
        padded = ops.cat([pixel_values, ops.zeros((bucket - patches, width), pixel_values.dtype)])
    order = np.zeros((bucket, 2), np.int32)
    order[:patches] = patch_order(grid, tower.spatial_merge_size)
    key_bias = np.zeros(bucket, np.float32)
    key_bias[patches:] = -np.inf
    rows = patches // tower.spatial_merge_size ** 2
    entry = graphs.entry(tower, (bucket, pixel_values.dtype), tower.forward_masked, f"{bucket} patches")
    return graphs.run(entry, (padded, mindspore.Tensor(order), mindspore.Tensor(key_bias)),
                      lambda: tower.forward_spans(pixel_values, grid),
                      lambda got, want: values_disagree(got, want, "image rows"),
                      lambda out: narrow(out, 0, 0, rows))
