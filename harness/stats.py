"""Figures from samples, shared by the load generator and the benchmarks (no dependencies: the GPU
script imports it on a machine that has none of the project's packages)."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` from 0 to 1); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
