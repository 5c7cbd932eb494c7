"""One way to derive a generator's seed from a run's seed and where it is used."""

from __future__ import annotations

__all__ = ["mix_seed"]


def mix_seed(seed: int, epoch: int = 0, rank: int = 0) -> int:
    """A non-negative integer that differs for every ``(seed, epoch, rank)`` a run uses
    (epochs below 7919 / 1_000_003 apart from the next seed's; ranks below 7919)."""
    return seed * 1_000_003 + epoch * 7919 + rank
