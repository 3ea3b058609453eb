"""Graphs used only where they agreed with PyNative, and PyNative with one warning where they did not.

MINDNLP_ACCEL_JIT=0 keeps every graph off. So does a MindSpore without the internals trace capture
needs (mindspore_trace.problem()), with one warning for the process. Decisions and each compile
are logged on the "mindnlp.accel" logger (eval/run.py reports them).
"""
import logging
import os
import warnings
import weakref
from typing import Callable, Optional

import numpy as np
import mindspore

from . import mindspore_trace
from .capture import TracedGraph

JIT_ENV = "MINDNLP_ACCEL_JIT"
# How far a graph's values may be from PyNative's, relative to the largest |value|: RTOL (what the tests
# hold graphs to), or in half precision EPS_UNITS units of the dtype's epsilon. A graph of padded or
# masked inputs runs matmuls of other shapes, which may round otherwise.
RTOL = 1e-5
EPS_UNITS = 4

logger = logging.getLogger("mindnlp.accel")
_warned_unavailable = []


def jit_enabled() -> bool:
    return os.environ.get(JIT_ENV, "1") != "0"


def unavailable() -> Optional[str]:
    """Why no graph may be made in this process, or None."""
    if not jit_enabled():
        return f"disabled by {JIT_ENV}=0"
    problem = mindspore_trace.problem()
    if problem is None:
        return None
    reason = f"off: this MindSpore lacks what trace capture needs ({problem})"
    if not _warned_unavailable:
        _warned_unavailable.append(reason)
        warnings.warn(f"mindnlp.accel: compiled graphs {reason}; every accelerated model runs in PyNative",
                      RuntimeWarning, stacklevel=3)
    return reason


def values_disagree(got, want, what: str) -> Optional[str]:
    """None if tensors `got` and `want` (same shape) agree within RTOL (or EPS_UNITS epsilons) of the
    largest |want|, else how `what` differs."""
    bound_units = max(RTOL, EPS_UNITS * _epsilon(want.dtype))
    got, want = got.astype(mindspore.float32).asnumpy(), want.astype(mindspore.float32).asnumpy()
    if got.shape != want.shape:
        return f"gave {what} of shape {got.shape}, not {want.shape}"
    if not np.isfinite(got).all():
        return f"gave {what} that are not finite"
    bound = bound_units * (float(np.abs(want).max()) or 1.0)
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    if not diff <= bound:
        return f"gave other {what} than PyNative (by {diff:.3g}, more than {bound:.3g})"
    return None


def _epsilon(dtype) -> float:
    """The dtype's machine epsilon (bf16, which NumPy has no type for: 2 ** -7)."""
    if dtype == mindspore.bfloat16:
        return 2.0 ** -7
    return float(np.finfo(mindspore.dtype_to_nptype(dtype)).eps)


class _Entry:
    """One keyed graph and how often it agreed with PyNative."""

    def __init__(self, graph: TracedGraph):
        self.graph, self.agreed, self.refused = graph, 0, False


class GraphSet:
    """One model's graphs of one `kind` (e.g. "decode step", "prefill") and the verdict on them.

    A graph is found by (owner, key) and lives on `owner` (the KV cache it writes, or the module it
    runs), so that a dropped owner takes its graphs along; a key names everything that makes another
    graph (shapes, optional inputs). It serves alone once it agreed with PyNative `trust_runs` times;
    until then `run` runs both and returns PyNative's result. A compile or run error or a disagreement
    refuses that graph (scope "graph") or every graph of the kind for the process (scope "kind"), with
    one warning, and the result is PyNative's. verdict: None until a graph is trusted, then "adopted";
    or why the kind runs in PyNative. compiles counts traces.
    """

    def __init__(self, kind: str, trust_runs: int, scope: str = "kind"):
        if scope not in ("kind", "graph"):
            raise ValueError(f"scope must be 'kind' or 'graph', got {scope!r}")
        self.kind, self.trust_runs, self.scope = kind, trust_runs, scope
        self.verdict: Optional[str] = unavailable()
        self.compiles = 0
        if self.verdict is not None:
            logger.info("mindnlp.accel: compiled %s %s", kind, self.verdict)

    @property
    def usable(self) -> bool:
        return self.verdict in (None, "adopted")

    def entry(self, owner, key, fn: Callable, description: str) -> _Entry:
        """The graph of `key` on `owner`, made (not yet traced) from `fn` on first use."""
        graphs = owner.__dict__.setdefault("_accel_graphs", weakref.WeakKeyDictionary()).setdefault(self, {})
        if key not in graphs:
            graphs[key] = _Entry(TracedGraph(fn, self.kind, description))
        return graphs[key]

    def trusted(self, entry: _Entry) -> bool:
        return self.usable and not entry.refused and entry.agreed >= self.trust_runs

    def run(self, entry: _Entry, tensors, eager: Callable, compare: Callable, unpack: Callable = lambda out: out):
        """The graph's output (as `unpack` makes it) where it is trusted; else PyNative's (`eager()`),
        after comparing the two with `compare(graph output, PyNative output)` (None where they agree,
        else how they differ)."""
        if not self.usable or entry.refused:
            return eager()
        self.compiles += not entry.graph.traced
        try:
            compiled = unpack(entry.graph(*tensors))
        except Exception as err:  # noqa: BLE001 - any capture, compile or run failure means "PyNative"
            compiled, problem = None, f"failed to compile or run ({type(err).__name__}: {err})"
        else:
            if entry.agreed >= self.trust_runs:
                return compiled
        want = eager()
        if compiled is not None:
            problem = compare(compiled, want)
        if problem is None:
            entry.agreed += 1
            if entry.agreed == self.trust_runs:
                self.verdict = "adopted"
                logger.info("mindnlp.accel: compiled %s adopted for %s: %d run(s) agreed with PyNative", self.kind,
                            entry.graph.description, entry.agreed)
        else:
            self.refuse(entry, problem)
        return want

    def refuse(self, entry: _Entry, problem: str) -> None:
        entry.refused = True
        what = f"compiled {self.kind} for {entry.graph.description}" if self.scope == "graph" else \
            f"compiled {self.kind}"
        if self.scope == "kind":
            self.verdict = problem
        warnings.warn(f"mindnlp.accel: {what} not used: it {problem}; running it in PyNative", RuntimeWarning,
                      stacklevel=3)
        logger.info("mindnlp.accel: %s not used: it %s", what, problem)
