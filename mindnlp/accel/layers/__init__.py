"""Shared layers of the accelerated models; each kernel sits beside its portable twin."""
from .attention import Attention, AttentionMask, attend, attention_eager, build_attention_mask
from .linear import Linear
from .norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary, rotate_half

__all__ = [
    "Attention", "AttentionMask", "Linear", "RMSNorm", "RotaryEmbedding",
    "apply_rotary", "attend", "attention_eager", "build_attention_mask", "rotate_half",
]
