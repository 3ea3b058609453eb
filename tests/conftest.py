"""Tests run against the patched tree, as a user has it after `git apply patches/*`.

MINDNLP_TREE names a tree to test (scripts/verify.sh passes the one it applied); otherwise the
current overlay is exported and applied to the base by scripts/series.py (cached by content).
"""
import functools
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _patched_tree():
    tree = os.environ.get("MINDNLP_TREE")
    if tree:
        return os.path.abspath(tree)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "series.py"), "patched"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("could not build the patched tree:\n" + proc.stderr)
    return proc.stdout.strip()


TREE = _patched_tree()
os.environ["MINDNLP_TREE"] = TREE  # subprocesses started by tests use the same tree
# The PyNative path is the one held bit for bit to stock, and the one whose launches the tests count;
# the compiled decode step is held to it within 1e-5 in tests/test_generation_compiled.py, which
# switches it on.
os.environ.setdefault("MINDNLP_ACCEL_JIT", "0")
sys.path.insert(0, TREE)
sys.path.insert(0, os.path.join(ROOT, "eval"))

import mindspore  # noqa: E402

mindspore.set_device("CPU")
mindspore.runtime.launch_blocking()

import mindnlp  # noqa: E402

if not os.path.abspath(mindnlp.__file__).startswith(TREE + os.sep):
    raise RuntimeError(f"mindnlp was imported from {mindnlp.__file__}, not from the patched tree {TREE}")


import pytest  # noqa: E402


class StockGenerateCalls(list):
    """The model class name of every call of stock's GenerationMixin.generate, in order. ``of(model)``
    counts the calls made on that very model object: names alone do not tell ours from stock's
    (both are Qwen2MoeForCausalLM), and a test calls both."""

    def __init__(self):
        super().__init__()
        self.models = []

    def of(self, model):
        return sum(called is model for called in self.models)


@pytest.fixture
def stock_generate_calls(monkeypatch):
    """Every call of stock's GenerationMixin.generate during the test (our fast path never makes one)."""
    from mindnlp.transformers.generation.utils import GenerationMixin

    calls = StockGenerateCalls()
    original = GenerationMixin.generate

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        calls.append(type(self).__name__)
        calls.models.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    return calls
