"""Learning-rate schedules shared by the training stages."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, base_lr: float, min_lr: float) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to ``min_lr``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    frac = min(max(step - warmup, 0) / span, 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * frac))


def warmup_linear(step: int, warmup: int, total: int, base_lr: float) -> float:
    """Linear warmup to ``base_lr``, then linear decay to zero at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * max(total - step, 0) / max(total - warmup, 1)
