"""Time the CPU kernels behind two of stock's attention steps, and check the faster forms give the same bits.

    python eval/bench_kernels.py [--heads 32] [--length 620] [--repeats 5]

Scores [1, heads, length, length] fp32, as Janus-Pro's prefill has them on the topology fixture:
dividing by sqrt(head_dim) with a Python divisor (the Div kernel) against RealDiv by a 0-d tensor, and
adding a [1, 1, length, length] mask broadcast over the heads against the mask repeated per head.
"""
import argparse
import math
import time

import numpy as np
import mindspore
from mindspore import Tensor, ops


def timed(function, repeats):
    function().asnumpy()
    start = time.perf_counter()
    for _ in range(repeats):
        out = function()
    out.asnumpy()
    return (time.perf_counter() - start) / repeats, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--length", type=int, default=620)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    mindspore.set_device("CPU")
    mindspore.runtime.launch_blocking()
    rng = np.random.default_rng(0)
    scores = Tensor(rng.standard_normal((1, args.heads, args.length, args.length)).astype(np.float32))
    mask = Tensor(rng.standard_normal((1, 1, args.length, args.length)).astype(np.float32))
    per_head = mask.broadcast_to(scores.shape).contiguous()
    scale, divisor = math.sqrt(128), Tensor(math.sqrt(128), mindspore.float32)
    real_div, add = ops.RealDiv(), ops.Add()
    rows = [("scores / sqrt(d), Div", lambda: scores / scale),
            ("scores / sqrt(d), RealDiv by a 0-d tensor", lambda: real_div(scores, divisor)),
            ("scores + mask broadcast over heads", lambda: add(scores, mask)),
            ("scores + mask repeated per head", lambda: add(scores, per_head))]
    results = [(name, *timed(function, args.repeats)) for name, function in rows]
    for name, seconds, _ in results:
        print(f"{name:45s} {seconds * 1e3:8.1f} ms")
    same_div = np.array_equal(results[0][2].asnumpy(), results[1][2].asnumpy())
    same_add = np.array_equal(results[2][2].asnumpy(), results[3][2].asnumpy())
    print(f"same bits: division {same_div}, mask add {same_add}")
    return 0 if same_div and same_add else 1


if __name__ == "__main__":
    raise SystemExit(main())
