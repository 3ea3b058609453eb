"""Count operator launches and host-device syncs per step of a region or a generate() call.

Both counts come from instrumenting the process, not from estimates:

* Operator launches come from MindSpore's own CPU profiler, which writes one record per
  kernel launch (FRAMEWORK/cpu_op_execute_timestamp_*.txt) with a wall-clock start time. It
  sees every launch, including those MindSpore issues internally (casts, contiguous copies)
  that a Python-level hook on primitives would miss, and it does not count view ops
  (reshape, transpose, slicing) that launch no kernel. A `mindspore.jit` graph call (AST or
  trace capture) is counted as one op named ``jit:<function>``, one host dispatch; the kernels
  the profiler records inside it are kept apart in ``graph_kernels`` because a graph launches
  them without per-op host dispatch.
* Host syncs are counted by wrapping every Tensor method that reads device data on the host
  (asnumpy, item, tolist, bool/int/float/index conversion, __array__, printing), each with
  the first caller outside mindspore and mindnlp's op shim, so offenders read as model lines.
  Code that stands in for one kernel (the "as on Ascend" mode's fused-kernel stand-ins) runs
  inside `as_one_launch(name)`: its own launches and host reads are dropped and it counts as
  one launch of `name`.
  Launches of ops whose output shape depends on the data (NonZero, MaskedSelect, Unique...)
  are syncs too, since the host must wait for the kernel to learn the shape. Not seen: values
  MindSpore's C++ reads by itself, e.g. a Tensor used as a slice bound or a reshape size.

Steps: the region starts in step 0; each `Region.mark()` starts the next step. For
generate(), every forward call after the first marks a step, so step 0 (prefill) holds
generate's setup and the first forward, and step i holds forward i plus generate's own work
(token selection, stopping checks, input preparation) up to the next forward. The last
step has no next input to prepare, so it runs a few ops fewer than the others. A decode step
run as one compiled graph calls no forward: each graph call then starts a step, and a forward
right after it (the same step run in PyNative to check the graph) belongs to it.

Launch times are attributed to steps by wall clock, which is exact only when each op runs
inside the Python call that issued it, so counting requires `mindspore.runtime.launch_blocking()`.
"""
import bisect
import collections
import contextlib
import dataclasses
import functools
import glob
import os
import re
import shutil
import sys
import tempfile
import time

import mindspore
from mindspore._c_expression import RuntimeConf
from mindspore.common import jit_trace
from mindspore.common.api import _JitExecutor, _pynative_executor
from mindspore.profiler import ProfilerActivity
from mindspore.profiler.profiler_interface import ProfilerInterface

# Ops whose output shape is only known after the kernel ran: on a device each is a host wait.
DATA_DEPENDENT_OPS = frozenset(
    {"NonZero", "NonZeroExt", "MaskedSelect", "Unique", "Unique2", "UniqueDim", "UniqueConsecutive"}
)

# Tensor methods that copy device data to the host. Nested calls (bool -> _item) count once.
SYNC_METHODS = (
    "asnumpy", "numpy", "_item", "item", "_tolist", "tolist", "get_bytes",
    "__bool__", "__int__", "__float__", "__index__", "__array__", "__repr__", "__str__",
)

_MINDSPORE_DIR = os.path.dirname(mindspore.__file__) + os.sep
_THIS_FILE = os.path.abspath(__file__)


@dataclasses.dataclass
class StepCounts:
    """What one step launched and where it waited for the device."""

    ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    syncs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    graph_kernels: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def n_ops(self):
        return sum(self.ops.values())

    @property
    def n_syncs(self):
        return sum(self.syncs.values())


@dataclasses.dataclass
class Counts:
    """Per-step counts; step 0 is the prefill, every later step one decode token."""

    steps: list

    @property
    def prefill_ops(self):
        return self.steps[0].n_ops

    @property
    def prefill_syncs(self):
        return self.steps[0].n_syncs

    @property
    def decode_tokens(self):
        return len(self.steps) - 1

    @property
    def decode_ops(self):
        """Mean operator launches per decode token."""
        return sum(s.n_ops for s in self._decode_steps()) / self.decode_tokens

    @property
    def decode_syncs(self):
        """Mean host syncs per decode token."""
        return sum(s.n_syncs for s in self._decode_steps()) / self.decode_tokens

    def _decode_steps(self):
        if self.decode_tokens == 0:
            raise ValueError("no decode steps were counted: generate at least 2 new tokens")
        return self.steps[1:]

    def _phase_steps(self, phase):
        if phase == "prefill":
            return self.steps[:1]
        if phase == "decode":
            return self._decode_steps()
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")

    def graph_calls(self, phase):
        """Compiled-graph calls (ops named jit:...) per step of `phase`."""
        steps = self._phase_steps(phase)
        return sum(n for s in steps for name, n in s.ops.items() if name.startswith("jit:")) / len(steps)

    def top(self, n=10, phase="decode"):
        """The n most frequent op names, sync sites and graph kernels, as counts per step of `phase`."""
        steps = self._phase_steps(phase)
        result = {}
        for kind in ("ops", "syncs", "graph_kernels"):
            total = sum((getattr(s, kind) for s in steps), collections.Counter())
            result[kind] = [(name, count / len(steps)) for name, count in total.most_common(n)]
        return result

    def to_dict(self, n=10):
        """A JSON-ready summary: totals per phase and top offenders."""
        summary = {
            "prefill_ops": self.prefill_ops,
            "prefill_syncs": self.prefill_syncs,
            "decode_tokens": self.decode_tokens,
            "steps_ops": [s.n_ops for s in self.steps],
            "steps_syncs": [s.n_syncs for s in self.steps],
            "top_prefill": self.top(n, "prefill"),
            "prefill_graph_calls": self.graph_calls("prefill"),
        }
        if self.decode_tokens:
            summary.update(decode_ops=self.decode_ops, decode_syncs=self.decode_syncs,
                           top_decode=self.top(n, "decode"), decode_graph_calls=self.graph_calls("decode"))
        return summary


def short_path(path):
    """The path relative to the sys.path entry it is imported from, e.g. mindnlp/.../x.py."""
    path = os.path.abspath(path)
    roots = [os.path.abspath(entry or os.getcwd()) + os.sep for entry in sys.path]
    relative = [path[len(root):] for root in roots if path.startswith(root)]
    return min(relative, key=len) if relative else path


def _skipped_dirs():
    # mindnlp.core is a torch-like shim over mindspore ops: the model line that called it is
    # the useful site, not the shim's line.
    dirs = [_MINDSPORE_DIR]
    core = sys.modules.get("mindnlp.core")
    if core is not None and getattr(core, "__file__", None):
        dirs.append(os.path.dirname(core.__file__) + os.sep)
    return tuple(dirs)


def caller_site():
    """file:line of the innermost frame outside mindspore, mindnlp.core and this module."""
    skipped = _skipped_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(skipped) and os.path.abspath(path) != _THIS_FILE:
            return f"{short_path(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


class _Patches:
    """Replace class attributes for the duration of a region and put the originals back."""

    def __init__(self):
        self._saved = []

    def replace(self, cls, name, new):
        own = name in cls.__dict__
        self._saved.append((cls, name, own, cls.__dict__.get(name)))
        setattr(cls, name, new)

    def restore(self):
        for cls, name, own, old in reversed(self._saved):
            if own:
                setattr(cls, name, old)
            else:
                delattr(cls, name)
        self._saved.clear()


class _CountedTraceRecorder:
    """jit_trace.tr (MindSpore's TraceRecorder) while counting: a run_graph outside a trace-mode call,
    which runs a traced graph again by its phase, is a graph call like the others."""

    def __init__(self, recorder, region):
        self._recorder, self._region = recorder, region

    def get_instance(self):
        return _CountedRecorderInstance(self._recorder.get_instance(), self._region)


class _CountedRecorderInstance:
    def __init__(self, instance, region):
        self._instance, self._region = instance, region

    def __getattr__(self, name):
        return getattr(self._instance, name)

    def run_graph(self, phase, *args):
        region = self._region
        if region.in_graph_call:
            return self._instance.run_graph(phase, *args)
        name = _graph_name(phase)
        if region.on_graph_call is not None:
            region.on_graph_call(name)
        start = time.time_ns()
        try:
            output = self._instance.run_graph(phase, *args)
            _pynative_executor.sync()
            return output
        finally:
            region._jit_windows.append((start, time.time_ns(), name))


def _tensor_classes():
    classes = [mindspore.Tensor]
    try:
        from mindspore.common._stub_tensor import StubTensor
    except ImportError:  # builds without stub tensors return real Tensors only
        return classes
    return classes + [StubTensor]


def _data_dependent_primitives():
    from mindspore.ops import operations
    from mindspore.ops.auto_generate import gen_ops_prim

    found = {}
    for module in (gen_ops_prim, operations):
        for name in DATA_DEPENDENT_OPS:
            cls = getattr(module, name, None)
            if isinstance(cls, type):
                found[id(cls)] = (name, cls)
    return list(found.values())


_active_regions = []  # the regions being counted, innermost last


@contextlib.contextmanager
def as_one_launch(name):
    """Count the code inside as one launch of `name` in every active region (nothing outside one)."""
    if not _active_regions:
        yield
        return
    start = time.time_ns()
    try:
        yield
    finally:
        for region in _active_regions:
            region._one_launch_windows.append((start, time.time_ns(), name))


class Region:
    """Live counting state; use through `count_region()`."""

    def __init__(self):
        self.marks = []
        self.counts = None
        self._syncs = []  # (time ns, site)
        self._dd_calls = []  # (time ns, op name, site) of data-dependent primitive calls
        self._jit_windows = []  # (start ns, end ns, function name)
        self._one_launch_windows = []  # (start ns, end ns, kernel name) of as_one_launch
        self._depth = 0  # inside a counted sync method
        self._jit_depth = 0
        self._trace_started = None  # (start ns, name) of the trace-mode graph call under way
        self.on_graph_call = None  # called with the graph's name as a graph call starts (count_generate marks steps)

    def mark(self):
        """Start the next step."""
        self.marks.append(time.time_ns())

    @property
    def in_graph_call(self):
        return self._jit_depth > 0 or self._trace_started is not None

    def _wrap_sync(self, method):
        @functools.wraps(method)
        def counted(*args, **kwargs):
            if self._depth == 0:
                self._syncs.append((time.time_ns(), caller_site()))
            self._depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted

    def _wrap_dd_call(self, name, call):
        @functools.wraps(call)
        def seen(*args, **kwargs):
            self._dd_calls.append((time.time_ns(), name, caller_site()))
            return call(*args, **kwargs)

        return seen

    def _wrap_jit(self, call):
        @functools.wraps(call)
        def timed(executor, *args, **kwargs):
            if self._jit_depth == 0 and self.on_graph_call is not None:
                self.on_graph_call(getattr(executor.fn, "__qualname__", "graph"))
            self._jit_depth += 1
            start = time.time_ns()
            try:
                output = call(executor, *args, **kwargs)
                # A graph runs behind the call's return even with blocking dispatch: wait for
                # it so its kernels fall inside this window.
                _pynative_executor.sync()
                return output
            finally:
                self._jit_depth -= 1
                if self._jit_depth == 0:
                    name = getattr(executor.fn, "__qualname__", "graph")
                    self._jit_windows.append((start, time.time_ns(), name))

        return timed

    def _wrap_trace_begin(self, begin):
        # A trace-mode graph call (mindspore.jit(capture_mode="trace")) runs from its begin to its end;
        # the first call also runs the function's body, whose launches count as the graph's.
        @functools.wraps(begin)
        def started(fn_name, *args):
            name = _graph_name(fn_name)
            if self.on_graph_call is not None:
                self.on_graph_call(name)  # before the window opens: the call belongs to the step it starts
            self._trace_started = (time.time_ns(), name)
            try:
                return begin(fn_name, *args)
            except BaseException:
                self._trace_started = None
                raise

        return started

    def _wrap_trace_end(self, end):
        @functools.wraps(end)
        def ended(*args):
            try:
                output = end(*args)
                _pynative_executor.sync()
                return output
            finally:
                if self._trace_started is not None:
                    start, name = self._trace_started
                    self._trace_started = None
                    self._jit_windows.append((start, time.time_ns(), name))

        return ended

    def _install(self, patches):
        for cls in _tensor_classes():
            for name in SYNC_METHODS:
                method = getattr(cls, name, None)
                if method is not None:
                    patches.replace(cls, name, self._wrap_sync(method))
        for name, cls in _data_dependent_primitives():
            patches.replace(cls, "__call__", self._wrap_dd_call(name, cls.__call__))
        patches.replace(_JitExecutor, "__call__", self._wrap_jit(_JitExecutor.__call__))
        patches.replace(jit_trace, "_jit_trace_begin", self._wrap_trace_begin(jit_trace._jit_trace_begin))
        patches.replace(jit_trace, "_jit_trace_end", self._wrap_trace_end(jit_trace._jit_trace_end))
        patches.replace(jit_trace, "tr", _CountedTraceRecorder(jit_trace.tr, self))

    def _step_of(self, stamp):
        return bisect.bisect_right(self.marks, stamp)

    def _in_jit_window(self, stamp, starts):
        return _in_window(self._jit_windows, starts, stamp)

    def _build(self, launches):
        # windows follow one another in time (neither kind nests in itself), so bisect finds the one
        one_starts = [w[0] for w in self._one_launch_windows]
        launches = [(t, name) for t, name in launches if not _in_window(self._one_launch_windows, one_starts, t)]
        self._syncs = [(t, site) for t, site in self._syncs if not _in_window(self._one_launch_windows, one_starts, t)]
        steps = [StepCounts() for _ in range(len(self.marks) + 1)]
        dd_sites = collections.defaultdict(list)  # (step, op name) -> sites in call order
        for stamp, name, site in self._dd_calls:
            dd_sites[(self._step_of(stamp), name)].append(site)
        dd_launched = collections.Counter()
        jit_starts = [w[0] for w in self._jit_windows]
        for stamp, name in launches:
            step = steps[self._step_of(stamp)]
            if self._in_jit_window(stamp, jit_starts):
                step.graph_kernels[name] += 1
                continue
            step.ops[name] += 1
            if name in DATA_DEPENDENT_OPS:
                # Launches take the sites of the same op's Python calls in this step, in order;
                # a launch issued where no Python call was seen (a C++ tensor method) says so.
                key = (self._step_of(stamp), name)
                sites = dd_sites[key]
                seen = dd_launched[key]
                site = sites[seen] if seen < len(sites) else "<caller not seen>"
                dd_launched[key] += 1
                step.syncs[f"{site} [{name} shape]"] += 1
        for start, _, name in self._jit_windows:
            steps[self._step_of(start)].ops[f"jit:{name}"] += 1
        for start, _, name in self._one_launch_windows:
            steps[self._step_of(start)].ops[name] += 1
        for stamp, site in self._syncs:
            steps[self._step_of(stamp)].syncs[site] += 1
        return Counts(steps)


def _graph_name(phase):
    """The function name in a trace-mode graph's phase ("module.name#id#[file:line].key")."""
    return phase.split("#", 1)[0].rsplit(".", 1)[-1]


def _in_window(windows, starts, stamp):
    """Whether `stamp` falls in one of `windows` ((start, end, name), in time order; starts their starts)."""
    i = bisect.bisect_right(starts, stamp) - 1
    return i >= 0 and stamp <= windows[i][1]


def _normalize_op_name(raw):
    # Profiler names look like "Add", "Default/Cast-op2" or "Expand/_SumExt/ReduceSum-op0".
    return re.sub(r"-op\d+$", "", raw.rsplit("/", 1)[-1])


def parse_launch_record(text):
    """(start time ns, op name) of every launch in a cpu_op_execute_timestamp file, in time order.

    Each line is ``name;HostCpuOps;start,duration,flag start,duration,flag ...``.
    """
    launches = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(";")
        if len(fields) != 3:
            raise ValueError(f"unexpected profiler launch record line: {line!r}")
        name = _normalize_op_name(fields[0])
        launches.extend((int(entry.split(",", 1)[0]), name) for entry in fields[2].split())
    launches.sort()
    return launches


def _read_launches(out_dir):
    files = glob.glob(os.path.join(out_dir, "*", "FRAMEWORK", "cpu_op_execute_timestamp_*.txt"))
    launches = []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            launches.extend(parse_launch_record(handle.read()))
    launches.sort()
    return launches


@contextlib.contextmanager
def count_region():
    """Count launches and syncs of the code inside; `region.counts` is set on exit.

    Call `region.mark()` inside to start a new step.
    """
    if not RuntimeConf.get_instance().is_launch_blocking():
        raise RuntimeError(
            "counting needs mindspore.runtime.launch_blocking(): with asynchronous dispatch "
            "a launch cannot be attributed to the step that issued it"
        )
    region = Region()
    patches = _Patches()
    _pynative_executor.sync()  # work queued before the region (a graph call) is not its work
    out_dir = tempfile.mkdtemp(prefix="opcount-")
    try:
        # stop() writes the launch record; the profiler's analysis step (a subprocess that
        # writes summaries we do not read) is skipped, but its reset of the process-wide
        # profiler state is needed or the next region cannot start.
        profiler = mindspore.Profiler(
            output_path=out_dir, activities=[ProfilerActivity.CPU], start_profile=False
        )
        profiler.start()
        try:
            region._install(patches)
            _active_regions.append(region)
            yield region
        finally:
            _active_regions.remove(region)
            patches.restore()
            profiler.stop()
            ProfilerInterface.finalize()
            ProfilerInterface.clear()
        region.counts = region._build(_read_launches(out_dir))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


@contextlib.contextmanager
def _marking(model, method_name, region):
    """Make every call of model.<method_name> after the first start a new step, and so every call
    of a decode step's graph (a step run as one graph; graph names say their kind, "decode_step" in
    the decode step's). Other graphs (the prompt's step, a vision tower) belong to the step they run
    in. A call of the method inside a graph call (its trace) is part of that step, as is one right
    after a graph call: the step run again in PyNative to check the graph (graphs.trust)."""
    original = getattr(model, method_name, None)
    if not callable(original):
        raise TypeError(f"{type(model).__name__} has no method {method_name!r} to mark steps with")
    calls = []  # what ran each model call: "forward" or the graph's name
    checking = []  # a graph ran, and the method's next call checks it

    @functools.wraps(original)
    def marked(*args, **kwargs):
        if region.in_graph_call:
            pass
        elif checking:
            checking.clear()
        else:
            if calls:
                region.mark()
            calls.append("forward")
        return original(*args, **kwargs)

    def on_graph_call(name):
        if "decode_step" in name and calls:
            region.mark()
        calls.append(name)
        checking[:] = [name]

    region.on_graph_call = on_graph_call

    had_own = method_name in vars(model)
    setattr(model, method_name, marked)
    try:
        yield calls
    finally:
        region.on_graph_call = None
        if had_own:
            setattr(model, method_name, original)
        else:
            delattr(model, method_name)


def count_generate(model, generate_kwargs, step_method="forward", prepare=None):
    """Counts of one `model.generate(**generate_kwargs)`; one step per call of `step_method`.
    prepare: called first, inside the counted region, for more generate kwargs; its launches and
    syncs count as prefill (Janus's processor, vision tower and merge)."""
    with count_region() as region:
        with _marking(model, step_method, region) as calls:
            model.generate(**generate_kwargs, **(prepare() if prepare is not None else {}))
    if not calls:
        raise RuntimeError(
            f"generate() never called {type(model).__name__}.{step_method}: pass the method each step runs"
        )
    return region.counts
