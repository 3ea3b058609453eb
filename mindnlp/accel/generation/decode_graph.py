"""The greedy decode step compiled as one graph, used once its first steps agreed with PyNative.

Graph. The step is step.decode_step attending over the whole static cache under a mask (PyNative
reads the first kv_len slots, a host number that changes every step and would recompile every
step). Masked keys add exactly zero, but the longer reductions may sum in another order, so the
logits agree with PyNative's to about 1e-6 relative in fp32, not bit for bit (tests bound them by
1e-5 with equal tokens). A graph is traced per cache (its owner: batch size and cache length) and
step layout (which optional state a call has: padding mask, repetition penalty, EOS ids), and
reused by every later call and prompt of that cache; the cache's Parameters are its state, written
in place.

Trust. The first TRUST_STEPS steps of each graph run both ways, compiled first, then PyNative
(which rewrites the same cache slots and gives the step's result). A graph is used alone only if at
every one of them its argmax equals PyNative's, its softmax is within step_graph.SOFTMAX_ATOL and
its tokens and next-step state are equal; a disagreement, or a compile or run error, refuses the
compiled step for the model for the rest of the process (graphs.trust, scope "kind").
"""
from ..graphs import GraphSet
from .step import decode_step
from .step_graph import disagreement, flatten, step_function, unpacker

TRUST_STEPS = 4


def compiled_decode(model) -> GraphSet:
    """The model's decode-step graphs, made on first use."""
    found = model.__dict__.get("_compiled_decode")
    if found is None:
        found = model.__dict__["_compiled_decode"] = GraphSet("decode step", TRUST_STEPS)
    return found


def compiled_step(model, cache, tokens, state, constants, kv_len: int):
    """decode_step over `tokens` [B]: compiled where its graph is trusted, both ways while it is not."""
    inputs = {"input_ids": tokens.unsqueeze(1)}
    layout, tensors = flatten(inputs, state, constants)
    graphs = compiled_decode(model)
    entry = graphs.entry(cache, layout, step_function(model, cache, layout, None),
                         f"batch {cache.batch_size}, cache length {cache.max_len}")
    return graphs.run(entry, tensors, lambda: decode_step(model, cache, inputs, state, constants, kv_len),
                      disagreement, unpacker(state))
