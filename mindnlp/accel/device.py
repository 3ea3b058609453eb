"""Which backend we run on, and the choice between a fused Ascend kernel and its portable twin.

A fused kernel is trusted only after it has run on this device and agreed with its twin on each of
CHECK_PROBES small random inputs. A kernel that sums in another order differs only where a sum falls
near a rounding boundary of the output dtype (about 1 in 1000 fp16 outputs, a few per probe), so one
probe can miss it and eight almost never do. By default it must agree bit for bit: a kernel that
changes the last bits changes the greedy text the judge compares, as contest teams found. A kernel
that agrees only within the tolerance its caller states is used when MINDNLP_ACCEL_INEXACT=1 opts
in. The decision is made once per kernel name, in the models' prepare pass before the first
forward, and kept for the life of the process, so the check costs a few host syncs at warm-up and
nothing afterwards.

Switches (environment):
  MINDNLP_ACCEL_FUSED=0    every portable twin, no fused kernel tried.
  MINDNLP_ACCEL_INEXACT=1  also fused kernels whose self-check agrees only within tolerance.
"""
import os
import warnings
from typing import Callable, Dict, Tuple

import numpy as np
import mindspore
from mindnlp.configs import ON_ORANGE_PI, use_pyboost

FUSED_ENV = "MINDNLP_ACCEL_FUSED"
INEXACT_ENV = "MINDNLP_ACCEL_INEXACT"

# Random inputs per self-check: each call of the caller's make_inputs draws new ones.
CHECK_PROBES = 8

_chosen: Dict[str, Callable] = {}
_decisions: Dict[str, str] = {}  # kernel name -> "fused" or why its twin is used


def device_target() -> str:
    """The backend MindSpore dispatches to: "Ascend", "CPU" or "GPU"."""
    return mindspore.get_context("device_target")


def on_ascend() -> bool:
    return device_target() == "Ascend"


def pyboost() -> bool:
    """Whether mindnlp takes its pyboost (mint) path, as it does on Ascend. Our layers ask here, not
    mindnlp.configs, before calling the op stock calls on that path, so that one query decides."""
    return use_pyboost()


def stock_fused_rms_norm() -> bool:
    """Whether stock's LlamaRMSNorm uses the fused RmsNorm in inference: on the pyboost path, except
    on Orange Pi (mindnlp.configs.ON_ORANGE_PI)."""
    return pyboost() and not ON_ORANGE_PI


def fused_enabled() -> bool:
    """Whether fused kernels may be tried at all: on Ascend, unless MINDNLP_ACCEL_FUSED=0."""
    return os.environ.get(FUSED_ENV, "1") != "0" and on_ascend()


def inexact_allowed() -> bool:
    """Whether a fused kernel that differs from its twin within tolerance may be used."""
    return os.environ.get(INEXACT_ENV, "0") == "1"


def choose(name: str, fused_fn: Callable, twin_fn: Callable, make_inputs: Callable[[], tuple],
           atol: float = 0.0, rtol: float = 0.0) -> Callable:
    """Return `fused_fn` if it runs here and matches `twin_fn` on CHECK_PROBES calls of `make_inputs()`
    (each drawing new random inputs), else `twin_fn`.

    `name` identifies the kernel and everything that changes its numerics (dtype, layout, mode):
    the first call with a name decides, later calls return the same function. Off Ascend, or with
    MINDNLP_ACCEL_FUSED=0, the twin is returned without trying the fused kernel. A fused kernel
    that raises or returns other shapes is rejected with one RuntimeWarning; so is one that is not
    bit-identical to its twin, unless MINDNLP_ACCEL_INEXACT=1 and it is within `atol` + `rtol` * |twin|.
    """
    if name in _chosen:
        return _chosen[name]
    if not fused_enabled():
        return twin_fn
    problem = None
    for _ in range(CHECK_PROBES):
        problem = _probe(fused_fn, twin_fn, make_inputs(), atol, rtol)
        if problem is not None:
            break
    if problem is None:
        _chosen[name] = fused_fn
        _decisions[name] = "fused"
    else:
        warnings.warn(f"mindnlp.accel: fused kernel {name!r} {problem}; using its portable twin",
                      RuntimeWarning, stacklevel=2)
        _chosen[name] = twin_fn
        _decisions[name] = f"twin: {problem}"
    return _chosen[name]


def _probe(fused_fn: Callable, twin_fn: Callable, inputs: tuple, atol: float, rtol: float):
    """None if `fused_fn` agrees with `twin_fn` on `inputs` (bit for bit, or within tolerance where
    MINDNLP_ACCEL_INEXACT=1), else what went wrong."""
    expected = _as_arrays(twin_fn(*inputs))
    try:
        got = _as_arrays(fused_fn(*inputs))
    except Exception as err:  # noqa: BLE001 - any failure of the fused kernel means "use the twin"
        return f"raised {type(err).__name__}: {err}"
    problem = _mismatch(got, expected, 0.0, 0.0)
    if problem is not None and inexact_allowed():
        return _mismatch(got, expected, atol, rtol)
    if problem is not None:
        problem += f"; {INEXACT_ENV}=1 allows it within atol {atol}, rtol {rtol}"
    return problem


def decisions() -> Dict[str, str]:
    """Every self-checked kernel of this process: name -> "fused", or "twin: <why>"."""
    return dict(_decisions)


def prepare_kernels(module, dtype, batch_size: int) -> None:
    """Settle the kernel choices of `module` and its submodules (each one's `prepare_kernels`) for
    inputs of `dtype` with `batch_size` rows per step, before the first forward that uses them."""
    for _, sub in module.named_modules():
        if hasattr(sub, "prepare_kernels"):
            sub.prepare_kernels(dtype, batch_size)


def reset_choices() -> None:
    """Forget every decision, so the next `choose` checks again (tests, or after a device change)."""
    _chosen.clear()
    _decisions.clear()


def _as_arrays(out) -> Tuple[np.ndarray, ...]:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    # bf16 has no NumPy type: compare in fp32, which holds every bf16 and fp16 value exactly.
    return tuple(o.astype(mindspore.float32).asnumpy() for o in outs)


def _mismatch(got, expected, atol, rtol):
    if len(got) != len(expected):
        return f"returned {len(got)} outputs, expected {len(expected)}"
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            return f"returned shape {g.shape}, expected {e.shape}"
        if not np.allclose(g, e, atol=atol, rtol=rtol):
            worst = float(np.nanmax(np.abs(g - e))) if np.isfinite(g).all() else float("nan")
            return f"differs from its twin (max abs diff {worst:.3g}, atol {atol}, rtol {rtol})"
    return None
