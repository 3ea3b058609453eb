"""Bucketed lengths for traced graphs, which are specialised to their shapes (mindspore_trace): an input
of n positions is padded to the smallest bucket that holds it, and an owner's first input also
compiles every larger bucket, so that later, longer inputs find theirs ready, and where its user can
run a prefix of the input, the next smaller one; a smaller bucket is compiled by the first input
that needs it. A warm-up no longer than the work it prepares for, or a bucket longer at most, thus
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

    def below(self, bucket: int) -> int:
        """The bucket under `bucket`, or 0."""
        return max((b for b in self.lengths() if b < bucket), default=0)

    def first_compiles(self, owner, length: int, largest: Optional[int] = None, below: bool = False) -> List[int]:
        """On `owner`'s first input (of `length`), the buckets besides its own to compile first: every
        larger one, largest first, and with `below` the next smaller one, which the caller runs on a
        prefix of the input (a warm-up a little longer than the work then leaves it no compile);
        [] afterwards."""
        if owner.__dict__.get("_accel_buckets_compiled", {}).get(self.env):
            return []
        owner.__dict__.setdefault("_accel_buckets_compiled", {})[self.env] = True
        own = self.fitting(length, largest)
        if own is None:
            return []
        larger = [b for b in reversed(self.lengths()) if own < b and (largest is None or b <= largest)]
        smaller = self.below(own) if below else 0
        return larger + ([smaller] if smaller else [])
