"""LogitClip (Wei et al., ICML 2023; docs/long_tail_noisy.md#logitclip).

Clamping the p-norm of the logit vector to τ bounds CE (and any loss of the logits), which makes
it tolerant to label noise:

    clip_τ(z) = τ · z / ‖z‖_p   if ‖z‖_p ≥ τ,   else z

Apply it only in training; test-time logits stay raw (argmax is unchanged anyway).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["LogitClipLoss", "clip_logits"]

_OFFICIAL_NORM_EPS = 1e-7  # added to the norm in the official code


def _check(tau: float, p: float) -> None:
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1 (a norm), got {p}")


def clip_logits(logits: Tensor, tau: float, p: float = 2, *, legacy_official: bool = False) -> Tensor:
    """Rescale each row of ``logits`` (…, C) onto the ℓp ball of radius ``tau`` if it lies outside.

    The paper's continuous form, written as z · τ / max(‖z‖_p, τ): rows inside the ball are
    returned unchanged (also bit-for-bit), rows outside get norm τ up to rounding, the zero
    vector is fine, and the gradient is finite everywhere. ``p`` may be ``float('inf')``.
    """
    # Official code (algorithms/clip.py) differs: threshold `temp` but rescale to norm 1/temp,
    # on ‖z‖+1e-7, so it is discontinuous unless temp = 1; legacy_official=True reproduces it.
    tau = float(tau)
    _check(tau, float(p))
    norms = torch.linalg.vector_norm(logits, ord=p, dim=-1, keepdim=True)
    if legacy_official:
        norms = norms + _OFFICIAL_NORM_EPS
        return torch.where(norms > tau, logits / norms / tau, logits)
    scale = tau / torch.clamp(norms, min=tau)
    return torch.where(norms > tau, logits * scale, logits)


class LogitClipLoss(nn.Module):
    """``base_loss(clip_τ(logits), targets)`` for any loss of logits (CE, α-loss, GCE, ...)."""

    def __init__(self, base_loss: Callable[[Tensor, Tensor], Tensor], tau: float = 1.0,
                 p: float = 2, legacy_official: bool = False) -> None:
        super().__init__()
        _check(float(tau), float(p))
        self.base_loss = base_loss
        self.tau = float(tau)
        self.p = float(p)
        self.legacy_official = bool(legacy_official)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        clipped = clip_logits(logits, self.tau, self.p, legacy_official=self.legacy_official)
        return self.base_loss(clipped, targets)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, p={self.p}, legacy_official={self.legacy_official}"
