"""Shared layers of the accelerated models; each kernel sits beside its portable twin."""
from .attention import Attention, AttentionMask, attend, attention_eager, build_attention_mask
from .linear import FusedLinear, Linear
from .norm import RMSNorm
from .rotary import RotaryEmbedding, RotaryTables, apply_rotary, with_identity_group

__all__ = [
    "Attention", "AttentionMask", "FusedLinear", "Linear", "RMSNorm", "RotaryEmbedding", "RotaryTables",
    "apply_rotary", "attend", "attention_eager", "build_attention_mask", "with_identity_group",
]
