"""α-loss (Sypherd et al., IEEE Trans. IT 2022; docs/long_tail_noisy.md#alpha-loss).

    ℓ^α(y, z) = α/(α−1) · [1 − p̂_y^{(α−1)/α}],   p̂ = softmax(z),   α ∈ (0, ∞]

One knob moves between the classical losses: α → 1 is cross-entropy, α = ½ is 1/p̂_y − 1 (the
exponential loss in margin form), α = ∞ is 1 − p̂_y (bounded, hence noise-robust). α > 1 is the
noisy-label setting, α < 1 the class-imbalance one.

Numerics. With s = log p̂_y (from ``log_softmax``, finite for any finite logits) and
β = 1 − 1/α, the loss is (1 − e^{βs})/β = −s · φ(βs) with φ(x) = expm1(x)/x, φ(0) = 1. That form
has no 0/0 at β = 0, so the loss is continuous (and smooth) through α = 1 and equals −s there;
α = 1 itself dispatches to ``F.cross_entropy``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AlphaLoss", "alpha_loss"]

_REDUCTIONS = ("mean", "sum", "none")
_SERIES_BELOW = 1e-4  # |x| under which φ(x) uses its Taylor series (error ~ x³/24 ≤ 5e-14)


def _expm1_over_x(x: Tensor) -> Tensor:
    """φ(x) = (eˣ − 1)/x with φ(0) = 1, finite with finite gradients everywhere."""
    small = x.abs() < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(x), x)  # keeps the unused branch free of 0/0 NaNs
    return torch.where(small, 1.0 + x / 2.0 + x * x / 6.0, torch.expm1(safe) / safe)


def alpha_loss(logits: Tensor, targets: Tensor, alpha: float, *, eps: float = 1e-8,
               reduction: str = "mean") -> Tensor:
    """α-loss of ``logits`` (N, C) against integer ``targets`` (N,), for any α in (0, ∞].

    ``alpha=float('inf')`` gives 1 − p̂_y. For α < 1 the exponent is negative and the loss is
    unbounded as p̂_y → 0, so p̂_y is floored at ``eps`` (docs/long_tail_noisy.md#alpha-loss; the
    reference adds 1e-8); for tiny α the floor is raised further so that p̂_y^{β} stays below
    √(largest float) and the loss stays finite. Floored samples get no gradient.
    """
    alpha = float(alpha)
    if not alpha > 0:
        raise ValueError(f"alpha must be in (0, inf], got {alpha}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if alpha == 1.0:
        return F.cross_entropy(logits, targets, reduction=reduction)

    log_p = F.log_softmax(logits, dim=1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
    beta = 1.0 - 1.0 / alpha  # 1.0 for alpha = inf
    if beta < 0:
        max_exponent = 0.5 * math.log(torch.finfo(log_p.dtype).max)
        log_floor = max(math.log(eps), -max_exponent / abs(beta))
        log_p = log_p.clamp(min=log_floor)
    loss = -log_p * _expm1_over_x(beta * log_p)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class AlphaLoss(nn.Module):
    """Module form of :func:`alpha_loss`, a drop-in for ``nn.CrossEntropyLoss`` (α = 1)."""

    def __init__(self, alpha: float, eps: float = 1e-8, reduction: str = "mean") -> None:
        super().__init__()
        if not float(alpha) > 0:
            raise ValueError(f"alpha must be in (0, inf], got {alpha}")
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return alpha_loss(logits, targets, self.alpha, eps=self.eps, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, eps={self.eps}, reduction={self.reduction!r}"
