"""Accelerated inference for mindnlp: our model implementations registered over stock classes."""
import os


def enabled():
    """True unless the environment sets MINDNLP_ACCEL=0."""
    return os.environ.get("MINDNLP_ACCEL", "1") != "0"


def install():
    """Register our implementations over the stock classes; a no-op when disabled."""
    if not enabled():
        return
