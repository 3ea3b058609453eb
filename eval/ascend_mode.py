"""The "as on Ascend" mode: mindnlp.accel's Ascend branches run on this CPU.

Inside `AscendMode()`, accel's view of the platform is the device's: `mindnlp.accel.device`
reports "Ascend" (`device_target`) and the pyboost path (`pyboost`), the two queries every Ascend
branch of accel goes through, and each fused MindSpore kernel accel calls is replaced by its
stand-in from ascend_kernels (signature, front-end and documented-rule checks, then the kernel's
result by portable ops; counted as one launch by counters; so are mindnlp's F.linear and the
matmuls of accel's pyboost branches, one kernel each on the device). Every call a stand-in rejects is kept in `refused` and also raised, so a test fails
on it even where device.choose turns the error into a fallback. mindnlp itself stays on its CPU path (its own pyboost flag is not touched: under it
mindnlp would call mint ops that have no CPU kernel, Randn for one), so where accel takes its
pyboost branch it calls the mindnlp op stock calls there, which runs here on the CPU kernels.

Build models inside the mode and drop them after it: a model keeps the kernels its prepare pass
chose, and a fused kernel chosen in the mode is a real Ascend kernel outside it.
"""
import collections
import importlib
from typing import Dict, Optional

import counters
from ascend_kernels import KERNELS, KernelCallError, bind, defaults_only, front_end_check

SABOTAGE = ("raise", "disagree")


class AscendMode:
    """Context manager. calls: Counter of kernel name -> stand-in calls that passed every check.
    refused: the KernelCallErrors raised. sabotage: {kernel name: "raise" | "disagree"} makes that
    stand-in fail after its checks, or return a result off by one part in a thousand."""

    def __init__(self, sabotage: Optional[Dict[str, str]] = None):
        sabotage = dict(sabotage or {})
        unknown = set(sabotage) - {kernel.name for kernel in KERNELS}
        bad = set(sabotage.values()) - set(SABOTAGE)
        if unknown or bad:
            raise ValueError(f"sabotage names unknown kernels {sorted(unknown)} or modes {sorted(bad)}")
        self.sabotage = sabotage
        self.calls = collections.Counter()
        self.refused = []
        self._restore = []

    def __enter__(self):
        from mindspore import mint
        from mindnlp.accel import device
        from mindnlp.core import ops as core_ops
        from mindnlp.core.nn import functional

        self._device = device
        try:
            self._swap(device, "device_target", lambda: "Ascend")
            self._swap(device, "pyboost", lambda: True)
            for kernel in KERNELS:
                module = importlib.import_module(kernel.module)
                self._swap(module, kernel.name, self._stand_in(kernel, getattr(module, kernel.name)))
            self._swap(functional, "linear", _one_launch("linear", functional.linear))
            for owner, name in ((core_ops, "matmul"), (mint, "matmul"), (mint, "bmm")):
                self._swap(owner, name, _one_launch(name, getattr(owner, name)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        device.reset_choices()
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()
        self._device.reset_choices()
        return False

    def assert_no_refusals(self):
        if self.refused:
            raise AssertionError("fused kernel calls refused in the as-on-Ascend mode:\n"
                                 + "\n".join(f"  {error}" for error in self.refused))

    def _swap(self, owner, name, replacement):
        self._restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def _stand_in(self, kernel, real):
        mode = self

        def stand_in(*args, **kwargs):
            with counters.as_one_launch(kernel.name):
                try:
                    arguments = bind(kernel.name, real, args, kwargs)
                    defaults_only(kernel.name, real, arguments, kernel.unmodelled)
                    front_end_check(kernel.name, real, args, kwargs)
                    kernel.check(arguments)
                except KernelCallError as error:
                    mode.refused.append(error)
                    raise
                mode.calls[kernel.name] += 1
                how = mode.sabotage.get(kernel.name)
                if how == "raise":
                    raise RuntimeError(f"{kernel.name}: stand-in made to fail")
                out = kernel.compute(arguments)
                if how == "disagree":
                    out = _nudged(out)
                return out

        stand_in.__name__ = kernel.name
        return stand_in


def _one_launch(name, function):
    """`function` counted as one launch of `name`: mindnlp's F.linear and the matmuls accel's pyboost
    branches call (mindnlp's ops.matmul, mint.matmul, mint.bmm), each one kernel on the device and on
    this CPU in fp16 a kernel wrapped in the Casts MindSpore inserts around it (the backend has no
    fp16 Dense, and runs fp16 batch matmuls through float32)."""
    def counted(*args, **kwargs):
        with counters.as_one_launch(name):
            return function(*args, **kwargs)

    return counted


def _nudged(out):
    if isinstance(out, (tuple, list)):
        return type(out)(_nudged(item) for item in out)
    return out * 1.001
