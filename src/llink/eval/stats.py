"""Small statistics shared by the evaluations."""

from __future__ import annotations

import math
from collections.abc import Sequence


def group_indices(groups: Sequence[str]) -> dict[str, list[int]]:
    """Item indices per group, largest group first."""
    out: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g or "unknown", []).append(i)
    return dict(sorted(out.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of a proportion k/n (95% for z = 1.96)."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]
