"""A function of tensors traced once into a graph and replayed by its phase afterwards.

Trace capture runs the function once in PyNative, recording every primitive call, and compiles the
record; later calls run the graph without Python. It records primitive calls only: basic indexing
and other Tensor views would be frozen into the graph with their trace-time values, and
Tensor.broadcast_to fails inside its pyboost wrapper, so the layers take layers.primitives.narrow /
broadcast_to, which call the recorded op while capturing. `untraced_calls_refused` turns any other
such call (indexing without a tensor index, a host read) into an error at compile time, and so into
PyNative, instead of a silently frozen value. An error raised inside the traced function is caught
there, a placeholder ends the trace normally, and the error is re-raised afterwards: MindSpore 2.6
cannot abort a trace, and one left open sends every later operator to its recorder, which fails.
A tensor made by a recorded op carries its node in the trace, which the next trace would find
released: layers build what they keep before the first forward (their prepare_kernels), never in one.
Graph names say their kind (accel_<kind>_<n>): eval/counters.py tells the decode step's graph
calls, which start a token each, from the others by it.
"""
import contextlib
import itertools
import logging
import os
import sys
import time

import mindspore
from mindspore import Tensor

from .. import device
from . import mindspore_trace

logger = logging.getLogger("mindnlp.accel")
_ids = itertools.count()


class TracedGraph:
    """`fn(*tensors)` (tensors in, a tensor or a tuple of tensors out) as one graph of `kind`.

    The first call traces (the arguments' shapes and dtypes are the graph's: call it with those only)
    and logs the compile with its time; later calls replay. On the CPU a replay reads its smallest
    output back: left unread, the first operator after it waited in MindSpore's dispatch queue as
    long again as the graph ran (qwen2_moe topology decode step, 2 cores: 0.053-0.058 s per token
    with the read against 0.11-0.14 without; py-spy put the wait in Pipeline::WaitForward and
    runtime.synchronize() did not avoid it). Not measured on a device, so not done there.
    """

    def __init__(self, fn, kind: str, description: str):
        self.fn, self.kind, self.description = fn, kind, description
        self.name = f"accel_{kind.replace(' ', '_')}_{next(_ids)}"
        self.phase = None
        self._wrapper = None  # MindSpore's trace wrapper, where the phase could not be told
        self.read_back = device.device_target() == "CPU"

    @property
    def traced(self) -> bool:
        return self.phase is not None or self._wrapper is not None

    def __call__(self, *tensors):
        if self.phase is not None:
            out = mindspore_trace.replay(self.phase, tensors)
        elif self._wrapper is not None:
            out = self._wrapper(*tensors)
        else:
            return self._trace(tensors)
        if self.read_back:
            min(out if isinstance(out, tuple) else (out,), key=lambda t: t.size).asnumpy()
        return out

    def _trace(self, tensors):
        failed = []

        def body(*args):
            try:
                with untraced_calls_refused():
                    return self.fn(*args)
            except Exception as err:  # noqa: BLE001 - re-raised below, once the trace has ended
                failed.append(err)
                return args[0]

        body.__name__ = body.__qualname__ = self.name
        # the recorder binds a tensor to one graph input: a tensor passed twice would become one
        # input, and a replay given two different tensors there would read only the second
        seen = set()
        tensors = tuple(t.copy() if id(t) in seen or seen.add(id(t)) else t for t in tensors)
        wrapper = mindspore_trace.trace(body)
        before = mindspore_trace.compiled_phases()
        started = time.perf_counter()
        try:
            with mindspore_trace.recording():
                out = wrapper(*tensors)
        except Exception:
            mindspore_trace.reset_state()
            raise
        if failed:
            raise failed[0]
        seconds = time.perf_counter() - started
        phases = mindspore_trace.compiled_phases() - before
        if len(phases) == 1:
            (self.phase,) = phases
        else:
            self._wrapper = wrapper  # not one new phase: the wrapper finds its own
        logger.info("mindnlp.accel: compiled %s for %s in %.2f s", self.kind, self.description, seconds,
                    extra={"compile_seconds": seconds, "graph_kind": self.kind})
        return out


@contextlib.contextmanager
def untraced_calls_refused():
    """Make the Tensor calls trace capture does not record raise while a graph is traced: indexing
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
        raise RuntimeError(f"Tensor.{name} in a traced graph: trace capture does not record it")

    return refuse
