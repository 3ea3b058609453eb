"""The greedy decode step compiled as one graph (mindspore.jit), adopted only where it matched PyNative.

Capture. Of MindSpore 2.6's three capture modes, on the shared layers (measured on CPU, mindspore-dev
2.6.0.dev20250323): "ast" parses the source and rejects mindnlp's Module.__call__ (a try statement)
and iteration over a ModuleList; "bytecode" runs but breaks the graph at most ops (1.2x faster only);
"trace" runs the step once in PyNative, recording every primitive call, and replays the recording
as one graph. Trace is used. It records primitive calls only: basic indexing and other Tensor views
would be frozen into the graph with their trace-time values, and Tensor.broadcast_to fails inside its
pyboost wrapper, so the layers take layers.primitives.narrow / broadcast_to, which call the traced op
while capturing. `untraced_calls_refused` turns any other such call in the step (indexing without a
tensor index, a host read) into an error at compile time, and so into the PyNative path, instead of
a silently frozen value. `jit_level="O0"` keeps every kernel PyNative launches and runs no
graph-kernel fusion or other pass that reorders arithmetic (in bf16 on Ascend a fused kernel would
round differently).

Graph. The step is generation_loop.decode_step, attending over the whole static cache under a mask
(PyNative reads the first kv_len slots, a host number that changes every step and would recompile
every step). Masked keys add exactly zero, but the longer reductions may sum in another order, so
the logits agree with PyNative's to about 1e-6 relative in fp32, not bit for bit (tests bound them
by 1e-5 with equal tokens). A graph is traced per cache (batch size and cache length: the bucket) and
step layout (which optional state a call has: padding mask, repetition penalty, EOS ids), and
reused by every later call and prompt of that bucket; the cache's Parameters are its state, written
in place. Later calls run the traced graph by its phase (_replay), as MindSpore's trace wrapper
would, without the wrapper's debug messages, which read every tensor back to the host. MindSpore keys traced graphs by function name and id, so each step function gets a name
of its own.

Trust. The first TRUST_STEPS decode steps of each graph run both ways, compiled first, then
PyNative (which rewrites the same cache slots and gives the step's result). A graph is used alone
only if at every one of them its argmax equals PyNative's, its softmax is within SOFTMAX_ATOL and
its tokens and next-step state are equal; a disagreement or a compile or run error refuses the
compiled step for the model for the rest of the process (also graphs adopted before), with one
warning, and that step's result is PyNative's. An error raised while the step is traced is caught inside the step, which then
returns a placeholder so that the trace ends normally, and is re-raised after it: MindSpore 2.6 has
no way to abort a trace, and one left open sends every later operator to its recorder, which fails. MINDNLP_ACCEL_JIT=0 disables it. The decision and its reason are logged once on
the "mindnlp.accel" logger, as is each compile with its time (eval/run.py reports them).
"""
import contextlib
import inspect
import itertools
import logging
import os
import re
import sys
import time
import warnings
import weakref
from typing import Optional

import numpy as np
import mindspore
from mindspore import Tensor
from mindspore._checkparam import is_stub_tensor
from mindspore.common import jit_trace
from mindspore.common.api import _convert_python_data

from . import device

JIT_ENV = "MINDNLP_ACCEL_JIT"
TRUST_STEPS = 4
# While the compiled step may be used, cache lengths are rounded up to this (else to causal_lm's
# 256): each length is a graph of its own, and the judge's prompts (the longest a few hundred tokens,
# plus 50 new) then share the one its warm-up compiled. The masked slots cost a longer attention.
COMPILED_CACHE_LENGTH_STEP = 1024
SOFTMAX_ATOL = 1e-4

logger = logging.getLogger("mindnlp.accel")
_names = itertools.count()


def jit_enabled() -> bool:
    return os.environ.get(JIT_ENV, "1") != "0"


class CompiledDecode:
    """One model's compiled decode steps and the verdict on them.

    verdict: None until a graph is trusted, then "adopted"; or why PyNative is used. compiles counts
    traces (a trace runs the step's Python body; a replay does not); each is logged with its time.
    """

    def __init__(self):
        self.verdict: Optional[str] = None if jit_enabled() else f"disabled by {JIT_ENV}=0"
        self.compiles = 0
        # On the CPU backend the first operator after a replay whose outputs were not read waits in
        # MindSpore's dispatch queue for as long again as the graph ran (qwen2_moe topology, 2 cores:
        # 0.11-0.14 s per token against 0.053-0.058 with the read, twice the CPU time; py-spy shows the
        # wait in Pipeline::WaitForward; runtime.synchronize() does not avoid it). Reading the step's
        # tokens, B integers, does. Measured on the CPU only, so done there only.
        self.read_tokens = device.device_target() == "CPU"
        if self.verdict is not None:
            logger.info("mindnlp.accel: compiled decode step %s", self.verdict)

    @property
    def usable(self) -> bool:
        return self.verdict in (None, "adopted")

    def step(self, decode_step, model, cache, tokens, state, constants, kv_len: int):
        """decode_step(model, cache, inputs, state, constants, kv_len) (generation_loop) over `tokens` [B]:
        compiled where its graph is trusted, both ways while it is not. state and constants are
        NamedTuples of tensors, None or (constants) Python values."""
        inputs = {"input_ids": tokens.unsqueeze(1)}
        layout, tensors = _flatten(inputs["input_ids"], state, constants)
        # held by the cache, so that a cache dropped for a longer one takes its graphs along
        graphs = cache.__dict__.setdefault("_compiled_steps", weakref.WeakKeyDictionary()).setdefault(self, {})
        graph = graphs.get(layout)
        if graph is None:
            graph = graphs[layout] = _Graph(self._compile(decode_step, model, cache, layout))
        try:
            compiled = self._run(graph, cache, tensors, state)
        except Exception as err:  # noqa: BLE001 - any capture, compile or run failure means "stay in PyNative"
            compiled, problem = None, f"failed to compile or run ({type(err).__name__}: {err})"
        else:
            if graph.agreed >= TRUST_STEPS:
                return compiled
        eager = decode_step(model, cache, inputs, state, constants, kv_len)
        if compiled is not None:
            problem = _disagreement(compiled, eager)
        if problem is None:
            graph.agreed += 1
            if graph.agreed == TRUST_STEPS:
                self.verdict = "adopted"
                logger.info("mindnlp.accel: compiled decode step adopted for batch %d, cache length %d: %d steps "
                            "agreed with PyNative (argmax equal, softmax within %g)", cache.batch_size,
                            cache.max_len, graph.agreed, SOFTMAX_ATOL)
        else:
            self.verdict = problem
            warnings.warn(f"mindnlp.accel: compiled decode step not used: it {problem}; decoding in PyNative",
                          RuntimeWarning, stacklevel=2)
            logger.info("mindnlp.accel: compiled decode step not used: it %s", problem)
        return eager

    def _run(self, graph, cache, tensors, state):
        if graph.traced:
            out = graph.run(*tensors)
            if self.read_tokens:
                out[2].asnumpy()
        else:
            graph.traced = True
            started = time.perf_counter()
            with _caller_lines_without_source(), _op_arguments_kept_alive():
                out = graph.run(*tensors)
            seconds = time.perf_counter() - started
            logger.info("mindnlp.accel: compiled decode step for batch %d, cache length %d in %.2f s",
                        cache.batch_size, cache.max_len, seconds, extra={"compile_seconds": seconds})
        logits, scores, tokens = out[:3]
        return logits, scores, tokens, _next_state(state, out[3:])

    def _compile(self, decode_step, model, cache, layout):
        failed = []

        def step(*tensors):
            self.compiles += 1
            input_ids, state, constants = _unflatten(layout, tensors)
            try:
                with untraced_calls_refused():
                    logits, scores, tokens, nxt = decode_step(model, cache, {"input_ids": input_ids}, state,
                                                              constants, None)
            except Exception as err:  # noqa: BLE001 - re-raised by `compiled` once the trace has ended
                failed.append(err)
                return tensors[:1]  # ends the trace (MindSpore has no way to abort one); the graph is dropped
            return (logits, scores, tokens) + tuple(t for t in nxt if t is not None)

        step.__name__ = step.__qualname__ = f"accel_decode_step_{next(_names)}"
        run = _capture(step)

        def compiled(*tensors):
            failed.clear()
            try:
                out = run(*tensors)
            except Exception:
                _trace_state_reset()
                raise
            if failed:
                raise failed[0]
            return out

        return compiled


def _replay(phase, tensors):
    """Run a traced graph again, as mindspore.jit's trace wrapper does for a phase it compiled but
    without its debug messages: they are formatted whatever the log level, so they read every
    argument and output back to the host (46 reads per decode step on the qwen2_moe topology; its
    _sync_stub_tensor formats each stub it resolves, so stubs are resolved here)."""
    args = tuple(t.stub_sync() if is_stub_tensor(t) else t for t in tensors)
    # the arguments' key, as the wrapper computes it: without it run_graph ran 2-3x slower (qwen2_moe
    # topology, CPU: 0.11-0.19 s per token against 0.066)
    jit_trace._jit_executor.generate_arguments_key(None, args, {}, False)  # pylint: disable=protected-access
    return _convert_python_data(jit_trace.tr.get_instance().run_graph(phase, args))


class _Graph:
    """A compiled step, whether it was traced, and how many steps it agreed with PyNative."""

    def __init__(self, run):
        self.run, self.traced, self.agreed = run, False, 0


def _capture(step):
    """`step` compiled by trace capture, without passes that change arithmetic (module docstring);
    later calls replay the graph (_replay). Every call has the arguments' shapes and dtypes of the
    first: they are part of the step's layout (_flatten)."""
    traced = mindspore.jit(step, capture_mode="trace", jit_level="O0")
    phase = []  # the phase MindSpore traced, once it has

    def run(*tensors):
        if phase:
            return _replay(phase[0], tensors)
        before = set(jit_trace._trace_compile_cache)  # pylint: disable=protected-access
        out = traced(*tensors)
        phase.extend(jit_trace._trace_compile_cache - before)  # pylint: disable=protected-access
        if len(phase) != 1:
            phase.clear()  # not one new phase: keep calling the wrapper, which finds its own
        return out

    return run


def compiled_decode(model) -> CompiledDecode:
    """The model's CompiledDecode, made on first use."""
    found = model.__dict__.get("_compiled_decode")
    if found is None:
        found = CompiledDecode()
        model.__dict__["_compiled_decode"] = found
    return found


def _flatten(input_ids, state, constants):
    """(layout, tensors): the NamedTuples' types, which fields hold tensors, and the values of the
    others (None, or a Python number such as the penalty, which the graph holds as a constant);
    then input_ids and the fields' tensors in order."""
    layout, tensors = [], [input_ids]
    for group in (state, constants):
        kinds = []
        for value in group:
            if isinstance(value, Tensor):
                kinds.append(_TENSOR)
                tensors.append(value)
            else:
                kinds.append(value)
        layout.append((type(group), tuple(kinds)))
    layout.append(tuple((tuple(t.shape), t.dtype) for t in tensors))  # a new shape is a new graph, checked anew
    return tuple(layout), tuple(tensors)


def _unflatten(layout, tensors):
    supplied = iter(tensors[1:])
    groups = [kind(*(next(supplied) if value is _TENSOR else value for value in kinds)) for kind, kinds in layout[:2]]
    return (tensors[0], *groups)


def _next_state(state, tensors):
    supplied = iter(tensors)
    return type(state)(*(next(supplied) if value is not None else None for value in state))


class _Tensor:
    """Marks a tensor field in a layout."""


_TENSOR = _Tensor()


def _disagreement(compiled, eager) -> Optional[str]:
    """None if the two steps' (logits, scores, tokens, next state) agree: argmax equal and softmax
    within SOFTMAX_ATOL (fp32), tokens and every state tensor equal; else how they differ."""
    got, want = compiled[0].astype(mindspore.float32).asnumpy(), eager[0].astype(mindspore.float32).asnumpy()
    if not np.isfinite(got).all():
        return "gave logits that are not finite"
    if (got.argmax(-1) != want.argmax(-1)).any():
        return "chose other tokens than PyNative"
    exact = [(compiled[2], eager[2])] + [(a, b) for a, b in zip(compiled[3], eager[3]) if a is not None]
    if any(not np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in exact):
        return "gave other tokens or next-step state than PyNative"
    diff = float(np.abs(_softmax(got) - _softmax(want)).max())
    if diff > SOFTMAX_ATOL:
        return f"differs from PyNative (softmax by {diff:.3g}, more than {SOFTMAX_ATOL})"
    return None


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@contextlib.contextmanager
def untraced_calls_refused():
    """Make the Tensor calls trace capture does not record raise while the step is traced: indexing
    without a tensor index (a view), Tensor.broadcast_to, and host reads. MindSpore's own code, which
    formats tensors while tracing, is let through."""
    saved = {name: Tensor.__dict__.get(name) for name in _UNTRACED}
    for name in _UNTRACED:
        setattr(Tensor, name, _refusing(name, getattr(Tensor, name)))
    try:
        yield
    finally:
        for name, method in saved.items():
            if method is None:
                delattr(Tensor, name)
            else:
                setattr(Tensor, name, method)


_MINDSPORE_DIR = os.path.dirname(mindspore.__file__) + os.sep
_UNTRACED = ("__getitem__", "broadcast_to", "asnumpy", "item", "tolist", "__bool__", "__int__", "__float__")


def _refusing(name, method):
    def refuse(self, *args, **kwargs):
        if sys._getframe(1).f_code.co_filename.startswith(_MINDSPORE_DIR):
            return method(self, *args, **kwargs)
        if name == "__getitem__":
            index = args[0] if isinstance(args[0], tuple) else (args[0],)
            if any(isinstance(part, Tensor) for part in index):  # a gather: recorded
                return method(self, *args, **kwargs)
        raise RuntimeError(f"Tensor.{name} in the decode step: trace capture does not record it")

    return refuse


@contextlib.contextmanager
def _caller_lines_without_source():
    """While tracing, MindSpore (2.6) records the caller's file and line of every frame on the stack
    and fails on a frame whose source it cannot read (code run from a string, some test runners);
    this gives it the frames that are files (it logs an error for each other one), without reading
    any source."""
    original = jit_trace._get_caller_lines  # pylint: disable=protected-access

    def caller_lines():
        frames = [frame for frame in inspect.stack(0)
                  if not _MINDSPORE_FRAME.search(frame.filename) and os.path.isfile(frame.filename)]
        return [frame.filename for frame in frames], [frame.lineno for frame in frames]

    jit_trace._get_caller_lines = caller_lines  # pylint: disable=protected-access
    try:
        yield
    finally:
        jit_trace._get_caller_lines = original  # pylint: disable=protected-access


_MINDSPORE_FRAME = re.compile(r"mindspore/common/.*\.py|mindspore/ops/.*\.py|mindspore/nn/.*\.py")



@contextlib.contextmanager
def _op_arguments_kept_alive():
    """MindSpore (2.6) knows a traced op's arguments and results by object identity, and an object
    freed during the trace (the begin and end tuples ops.split builds for each slice) can hand its id
    to a later one with other values, which is then recorded as the earlier node: a slice with wrong
    bounds (seen once in three runs as a shape error at the end of the padded batch's trace; each
    tuple argument is recorded as a fresh copy, freed as soon as the op is). Every argument and result
    of a recorded op, and the copy recorded, passes through jit_trace._sync_stub_tensor and is kept
    alive until the trace ends; that holds one step's intermediate values for the trace's time."""
    kept = []
    original = jit_trace._sync_stub_tensor  # pylint: disable=protected-access

    def keeping(value):
        synced = original(value)  # a new tuple for a tuple: the object that is recorded
        kept.append((value, synced))
        return synced

    jit_trace._sync_stub_tensor = keeping  # pylint: disable=protected-access
    try:
        yield
    finally:
        jit_trace._sync_stub_tensor = original  # pylint: disable=protected-access
        kept.clear()


def _trace_state_reset() -> None:
    """After MindSpore itself failed to end a trace (its end_graph raised), clear the Python state it
    leaves set, which would send every later operator to the failed trace."""
    jit_trace.set_jit_context(None)
    jit_trace._trace_jit_context.compiled = False  # pylint: disable=protected-access
    jit_trace._using_trace = False  # pylint: disable=protected-access
