"""Per-minibatch schedules of ℓ∞-distance training (docs/linf_dist.md#training-schedule).

Every quantity is a pure function of the global step ``it = epoch·N + batch`` (N minibatches per
epoch), so a resumed run recomputes exactly where it was.
"""

from __future__ import annotations

INF = float("inf")


def ramp(it: int, start_epoch: float, end_epoch: float, steps_per_epoch: int) -> float:
    """Fraction of the way from ``start_epoch`` to ``end_epoch`` at step ``it``, clamped to [0, 1]
    (1 from the start when end ≤ start: no ramp)."""
    if end_epoch <= start_epoch:
        return 1.0
    r = (it - start_epoch * steps_per_epoch) / ((end_epoch - start_epoch) * steps_per_epoch)
    return min(max(r, 0.0), 1.0)


def p_at(r: float, p_start: float = 8.0, p_end: float = 1000.0) -> float:
    """Geometric growth from p_start to p_end; ∞ once the ramp is done (when p_end ≥ 100)."""
    if r >= 1.0:
        return INF if p_end >= 100 else p_end
    return p_start * (p_end / p_start) ** r


def lambda_at(r: float, lambda_start: float, lambda_end: float) -> float:
    """The v2 mixing weight of the cross-entropy term, decaying geometrically with the p ramp."""
    return lambda_start * (lambda_end / lambda_start) ** r
