"""The prompt's step compiled per bucket length, the buckets compiled on a cache's first prompt.

Graph. A prompt of n positions runs step.decode_step right-padded to the smallest bucket b >= n
(input ids 0, embeddings 0, rope positions 0 after the prompt), over cache slots [0, b) with
kv_len b: causality hides the pads from every real position, the pads' keys and values land in
slots that decode steps overwrite before any query sees them, and the logits are those of the real
last position, taken by a tensor index. A trace is specialised to its shapes (mindspore_trace), so
each bucket is a graph of its own, on the KV cache it writes.

When (graphs.buckets). On the first prompt of batch 1 a cache serves, its bucket and every larger
one the cache holds are compiled and checked, each on that prompt padded to it, and the bucket
below, on a prefix of the prompt halfway into it (a warm-up a little longer than the prompts, as
Janus's may be: about 630 positions each); another smaller bucket on the first prompt that needs it;
other batch sizes each bucket so. In each protocol the judge runs, the warm-up takes every compile.
Each graph holds memory: on the CPU backend it keeps the workspaces of its broadcasting kernels
(about 650 MB for bucket 1024 on the qwen2_moe topology). A
prompt longer than the largest bucket runs in PyNative, with one info line; so does one longer than
the model's greedy_prefill_bucket_limit (the MoE models': layers.moe.PREFILL_BUCKET_LIMIT).

Trust. A bucket's graph serves only after it agreed with PyNative, whose exact-length prefill is
stock's arithmetic and gives that first prompt its result: argmax and state equal and softmax
within step_graph.SOFTMAX_ATOL (step_graph.disagreement), and the cache rows of the real positions
within graphs.trust.values_disagree's bound of each layer's largest value: the padded matmuls may
round otherwise (qwen2_moe topology, fp32, 30 positions in bucket 96: 1.0e-6 of the largest value). A
disagreement or an error keeps that bucket in PyNative, with one warning (scope "graph").
MINDNLP_ACCEL_PREFILL_BUCKETS overrides the buckets (comma-separated lengths).
"""
import logging
from typing import Optional

import numpy as np
import mindspore
from mindspore import ops

from ..graphs import GraphSet
from ..graphs.buckets import Buckets
from ..graphs.trust import values_disagree
from ..layers.primitives import narrow, take_rows
from .step import DecodeState, PromptOnHost, cache_positions, decode_step
from .step_graph import disagreement, flatten, step_function, unpacker

# Steps of at most 1.5x from 128 up, and 640 for Janus-Pro's prompts (576 image positions and its
# template): a prompt pads by at most half its length, where attention costs the square of the bucket
# (the judge's: about 20, 50 and 150 text tokens; 90, 351 and 1023 for Qwen2-VL; 630 for Janus).
BUCKETS = Buckets("MINDNLP_ACCEL_PREFILL_BUCKETS", (64, 128, 192, 256, 384, 512, 640, 768, 1024))
BUCKETS_ENV = BUCKETS.env

logger = logging.getLogger("mindnlp.accel")


def largest_bucket(model, cache=None) -> int:
    """The largest bucket `model` compiles (its greedy_prefill_bucket_limit), within `cache` if given."""
    limits = [limit for limit in (model.greedy_prefill_bucket_limit, cache and cache.max_len) if limit]
    return BUCKETS.largest(min(limits) if limits else None)


def compiled_prefill(model) -> GraphSet:
    """The model's prefill graphs, made on first use."""
    found = model.__dict__.get("_compiled_prefill")
    if found is None:
        found = model.__dict__["_compiled_prefill"] = GraphSet("prefill", trust_runs=1, scope="graph")
    return found


def prefill(model, cache, inputs: dict, state: DecodeState, constants, length: int, host: PromptOnHost):
    """decode_step over the prompt (`inputs` of `length` positions, input_ids or inputs_embeds, and
    `host`, its ids and positions on the host): by its bucket's graph where that is trusted, else in
    PyNative (module docstring)."""
    graphs = compiled_prefill(model)
    largest = largest_bucket(model, cache)
    bucket = BUCKETS.fitting(length, largest) if largest else None
    if not graphs.usable or bucket is None or set(inputs) - {"input_ids", "inputs_embeds"}:
        if graphs.usable and bucket is None:
            logger.info("mindnlp.accel: a prompt of %d positions is longer than the largest prefill bucket that "
                        "fits the cache and the model (%s): prefill in PyNative", length, largest)
        return decode_step(model, cache, inputs, state, constants, length)
    if _batch(inputs) == 1:
        for other in BUCKETS.first_compiles(cache, length, largest, below=True):
            if other >= length:
                _run_bucket(model, graphs, cache, other, inputs, state, host, constants, length)
            else:
                shorter = (BUCKETS.below(other) + other) // 2 + 1
                _run_bucket(model, graphs, cache, other, *_prefix(inputs, state, host, shorter), constants, shorter)
    return _run_bucket(model, graphs, cache, bucket, inputs, state, host, constants, length)


def _run_bucket(model, graphs, cache, bucket, inputs, state, host, constants, length):
    padded_inputs, padded_state = _padded(inputs, state, host, length, bucket)
    last = cache_positions(length - 1, length)
    layout, tensors = flatten(padded_inputs, padded_state, constants, last)
    entry = graphs.entry(cache, layout, step_function(model, cache, layout, bucket),
                         f"bucket {bucket} (batch {_batch(inputs)}, cache length {cache.max_len})")
    written = {}

    def eager():  # runs after the graph wrote the cache, and only while it is not trusted
        rows = _real_rows(cache, length, constants.attention_mask)
        written["graph"] = _cache_rows(cache, rows)
        out = decode_step(model, cache, inputs, state, constants, length)
        written["eager"] = _cache_rows(cache, rows)
        return out

    def compare(compiled, want):
        return disagreement(compiled, want) or _cache_disagreement(written["graph"], written["eager"])

    return graphs.run(entry, tensors, eager, compare, unpacker(padded_state))


def _batch(inputs) -> int:
    return next(iter(inputs.values())).shape[0]


def _prefix(inputs, state: DecodeState, host: PromptOnHost, length: int):
    """(inputs, state, host) of the prompt's first `length` positions: a prompt of its own, which
    causality gives the same results there."""
    ids, positions = host.ids[:, :length], host.positions[..., :length]
    inputs = {name: mindspore.Tensor(ids) if name == "input_ids" else narrow(value, 1, 0, length)
              for name, value in inputs.items()}
    state = state._replace(cache_position=cache_positions(0, length),
                           position_ids=mindspore.Tensor(positions.astype(np.int32)))
    return inputs, state, PromptOnHost(ids, positions)


def _padded(inputs, state: DecodeState, host: PromptOnHost, length: int, bucket: int):
    """The prompt right-padded to `bucket` positions: ids and embeddings 0, rope positions 0. Ids and
    positions are padded on the host (no launch), embeddings on the device (two)."""
    pad = bucket - length
    if not pad:
        return inputs, state
    padded = {}
    for name, value in inputs.items():
        if name == "input_ids":
            padded[name] = mindspore.Tensor(np.pad(host.ids, ((0, 0), (0, pad))))
        else:
            zeros = ops.zeros((value.shape[0], pad) + tuple(value.shape[2:]), value.dtype)
            padded[name] = ops.cat([value, zeros], 1)
    positions = np.pad(host.positions, [(0, 0)] * (host.positions.ndim - 1) + [(0, pad)])
    return padded, state._replace(cache_position=cache_positions(0, bucket),
                                  position_ids=mindspore.Tensor(positions.astype(np.int32)))


def _real_rows(cache, length: int, attention_mask):
    """Row index (int32, flat cache rows) of the real positions among slots [0, length) of every
    (sequence, head) block: a left pad's keys and values are never read, and a query that sees no key
    has no defined answer (one host read of the mask, while a bucket is checked)."""
    heads = 2 * cache.num_kv_heads
    real = np.ones((cache.batch_size, length), bool)
    if attention_mask is not None:
        real = attention_mask.asnumpy()[:, :length] != 0
    starts = np.arange(cache.batch_size * heads, dtype=np.int64) * cache.max_len
    slots = np.repeat(real, heads, axis=0)  # [B * heads, length]
    rows = (starts[:, None] + np.arange(length))[slots]
    return mindspore.Tensor(rows.astype(np.int32))


def _cache_rows(cache, rows):
    return [take_rows(buffer, rows) for buffer in cache.buffers]


def _cache_disagreement(graph_rows, eager_rows) -> Optional[str]:
    for layer, (got, want) in enumerate(zip(graph_rows, eager_rows)):
        problem = values_disagree(got, want, f"keys or values in layer {layer}")
        if problem:
            return problem
    return None
