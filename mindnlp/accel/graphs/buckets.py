"""Bucketed lengths for traced graphs, which are specialised to their shapes (mindspore_trace): an input
of n positions is padded to the smallest bucket that holds it, and an owner's first input also
compiles every larger bucket, so that later, longer inputs find theirs ready; a smaller bucket is
compiled by the first input that needs it. A warm-up no longer than the work it prepares for thus
takes every compile, and no graph is made that no input can use (each holds memory)."""
import os
from typing import List, Optional, Sequence


class Buckets:
    """The lengths of one kind of graph: `default`, or the comma-separated lengths of `env`."""

    def __init__(self, env: str, default: Sequence[int]):
        self.env, self.default = env, tuple(default)

    def lengths(self) -> Sequence[int]:
        given = os.environ.get(self.env)
        if not given:
            return self.default
        try:
            lengths = sorted({int(part) for part in given.split(",") if part.strip()})
        except ValueError:
            lengths = []
        if not lengths or lengths[0] < 1:
            raise ValueError(f"{self.env} must be comma-separated positive lengths, got {given!r}")
        return tuple(lengths)

    def fitting(self, length: int, largest: Optional[int] = None) -> Optional[int]:
        """The smallest bucket >= length (and <= largest), or None."""
        return next((b for b in self.lengths() if length <= b and (largest is None or b <= largest)), None)

    def largest(self, limit: Optional[int] = None) -> Optional[int]:
        fits = [b for b in self.lengths() if limit is None or b <= limit]
        return fits[-1] if fits else None

    def first_compiles(self, owner, length: int, largest: Optional[int] = None) -> List[int]:
        """On `owner`'s first input (of `length`), the buckets above its own to compile first,
        largest first; [] afterwards."""
        if owner.__dict__.get("_accel_buckets_compiled", {}).get(self.env):
            return []
        owner.__dict__.setdefault("_accel_buckets_compiled", {})[self.env] = True
        own = self.fitting(length, largest)
        return [b for b in reversed(self.lengths()) if own is not None and own < b and (largest is None or b <= largest)]
