"""Accelerated inference for mindnlp: our model implementations registered over stock classes.

``mindnlp/transformers/__init__.py`` ends with the hook
``from mindnlp.accel import install as _install_accel; _install_accel()``; MINDNLP_ACCEL=0 keeps stock everywhere.
"""
from .registry import accelerated_class, enabled, install, stock_class, uninstall

__all__ = ["accelerated_class", "enabled", "install", "stock_class", "uninstall"]
