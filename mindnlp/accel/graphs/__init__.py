"""Compiled graphs (MindSpore trace capture) for the decode step, the prefill and the vision towers.

capture.TracedGraph traces a function of tensors once and replays it; trust.GraphSet keeps a
model's graphs of one kind and uses each only after it agreed with PyNative; mindspore_trace holds
every private MindSpore name they need, looked up once and guarded.
"""
from .capture import TracedGraph, untraced_calls_refused
from .mindspore_trace import capturing
from .trust import JIT_ENV, GraphSet, jit_enabled

__all__ = ["GraphSet", "JIT_ENV", "TracedGraph", "capturing", "jit_enabled", "untraced_calls_refused"]
