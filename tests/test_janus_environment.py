"""The branch's Janus-Pro package imports in our environment and builds its language model with ours.

janus (llm/inference/janus_pro/janus/, on the 0.4 branch only) imports attrdict, which mindnlp does not
pull in (requirements-common.txt pins it), and takes LlamaForCausalLM from mindnlp.transformers by name
at import time, so with the series applied it gets our Llama without an edit of its own.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import TREE

JANUS_DIR = os.path.join(TREE, "llm", "inference", "janus_pro")

PROBE = """
import mindspore
mindspore.set_device("CPU")
import janus.models.modeling_vlm as vlm
from mindnlp.accel.models.llama import LlamaForCausalLM
print("RESULT", vlm.LlamaForCausalLM is LlamaForCausalLM)
"""


def test_the_packages_janus_imports_are_installed():
    assert importlib.util.find_spec("attrdict") is not None


@pytest.mark.skipif(not os.path.isdir(os.path.join(JANUS_DIR, "janus")),
                    reason="the base has no llm/inference/janus_pro (the 0.4.1 wheel); set MINDNLP_BASE to a "
                           "checkout of the 0.4 branch to run this")
def test_janus_imports_and_takes_our_llama():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([JANUS_DIR, TREE]))
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=600,
                          cwd=JANUS_DIR)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("RESULT")] == ["RESULT True"]
