"""The one stand-in that lets the branch's janus package build its model on the CPU backend.

Janus's VQ-16 image-generation model L2-normalises its codebook when it is built (F.normalize,
which calls mindspore.mint.norm), and mint.norm has no CPU kernel (LinalgVectorNorm). Building any
MultiModalityCausalLM therefore fails on CPU, stock's and ours alike: the series leaves the unused
generation half in place (it is about 0.2 B parameters). While this context is active,
mindspore.mint.norm is mindspore.ops.norm, which runs on CPU; the understanding path never calls
it. Tests and the harness apply it around model construction on CPU only, never in shipped code.
MindSpore is imported on entry, not with this module: the harness's parent process imports none.
"""
import contextlib


def _cpu_norm(input, p=2.0, dim=None, keepdim=False, dtype=None):
    import mindspore

    return mindspore.ops.norm(input, p, dim, keepdim, dtype=dtype)


@contextlib.contextmanager
def janus_on_cpu():
    import mindspore

    if mindspore.get_context("device_target") != "CPU":
        yield False
        return
    original = mindspore.mint.norm
    mindspore.mint.norm = _cpu_norm
    try:
        yield True
    finally:
        mindspore.mint.norm = original
