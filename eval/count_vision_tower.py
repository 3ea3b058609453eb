"""Launches and host syncs of one Qwen2-VL vision tower forward, stock's against ours, same weights.

Usage: python eval/count_vision_tower.py [--size topology] [--grid 1,16,24 ...] [--dtype float32|float16]
Run it on the patched tree (PYTHONPATH=$(python3 scripts/series.py patched)); each grid is (t, h, w)
in patches, one per image. Prints one line per tower, after a warm-up forward of each.
"""
import argparse
import os
import sys

import numpy as np
import mindspore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import counters  # noqa: E402
import fixtures  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="topology", choices=("tiny", "mixed", "topology"))
    parser.add_argument("--grid", action="append", help="t,h,w of one image (repeatable; default 1,16,24)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    args = parser.parse_args(argv)
    mindspore.set_device("CPU")
    mindspore.runtime.launch_blocking()
    from mindnlp.core import no_grad
    from mindnlp.transformers.models.qwen2_vl import modeling_qwen2_vl as stock_module
    from mindnlp.accel.models.qwen2_vl_vision import VisionTower

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval_cache", "fixtures")
    config = stock_module.Qwen2VLConfig.from_pretrained(fixtures.ensure("qwen2_vl", args.size, root)).vision_config
    grid = np.array([[int(n) for n in g.split(",")] for g in (args.grid or ["1,16,24"])])
    dtype = getattr(mindspore, args.dtype)
    stock = stock_module.Qwen2VisionTransformerPretrainedModel._from_config(config).set_train(False)
    ours = VisionTower(config).set_train(False)
    ours.load_state_dict(stock.state_dict(), strict=True)
    patches = int(np.prod(grid, -1).sum())
    pixels = np.random.default_rng(0).standard_normal((patches, 3 * config.temporal_patch_size
                                                         * config.patch_size ** 2)).astype(np.float32)
    for name, tower in (("stock", stock), ("ours", ours)):
        tower = tower.to(dtype)
        inputs = (mindspore.Tensor(pixels).to(dtype), mindspore.Tensor(grid))
        with no_grad():
            tower(*inputs)
            with counters.count_region() as region:
                tower(*inputs)
        step = region.counts.steps[0]
        print(f"{name}: {step.n_ops} launches, {step.n_syncs} host syncs "
              f"({len(grid)} image(s), {patches} patches, {config.depth} blocks, {args.dtype})")


if __name__ == "__main__":
    main()
