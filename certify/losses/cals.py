"""CALS: Class Adaptive Label Smoothing (Liu et al., CVPR 2023; docs/long_tail_noisy.md#cals).

CALS keeps every logit within a margin m of the largest one (the MbLS constraint) but enforces it
with an augmented Lagrangian whose multipliers are learned per class, so classes that need more
smoothing get more. With the normalized constraint

    h_ij = (max_k z_ik − z_ij − m) / m ≤ 0        (all j, the argmax included, where h = −1)

the training loss is CE(z, y) + (1/(N·C)) Σ_i Σ_j P(h_ij; λ_j, ρ_j) with the PHR penalty

    P(h; λ, ρ) = [max(0, λ + ρh)² − λ²] / (2ρ),      P'(h) = max(0, λ + ρh).

Outer loop, once per epoch on the **validation** set (the trainer needs that hook):
λ_j ← clamp(mean_i clamp(P'(h_ij), λ_min, λ_max), λ_min, λ_max), and every ``rho_step`` epochs
ρ_j ← clamp(γ ρ_j, ρ_min, ρ_max) where the mean constraint h̄_j did not drop below τ·max(h̄_j^prev, 0).
Defaults (docs/long_tail_noisy.md#cals): m = 10, λ ∈ [1e-6, 1e6] starting at 1e-6, ρ ∈ [1, 10] starting at 1,
rho_step = 10, γ = 1.2, τ = 0.9.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_MARGIN",
    "LAMBDA_MAX",
    "LAMBDA_MIN",
    "RHO_MAX",
    "RHO_MIN",
    "CALSMultipliers",
    "cals_constraints",
    "cals_loss",
    "cals_penalty",
    "phr_penalty",
    "phr_penalty_grad",
    "update_multipliers",
    "update_rho",
]

LAMBDA_MIN, LAMBDA_MAX = 1e-6, 1e6
RHO_MIN, RHO_MAX = 1.0, 10.0
DEFAULT_MARGIN = 10.0  # every README command; the yaml default is 20


def cals_constraints(logits: Tensor, margin: float = DEFAULT_MARGIN) -> Tensor:
    """h_ij = (max_k z_ik − z_ij − m)/m for logits (N, C); ≤ 0 means the margin is kept."""
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    return (logits.amax(dim=1, keepdim=True) - logits - margin) / margin


def phr_penalty(h: Tensor, lambd: Tensor | float, rho: Tensor | float) -> Tensor:
    """PHR penalty [max(0, λ+ρh)² − λ²]/(2ρ), elementwise (λ, ρ broadcast over the class axis)."""
    return (torch.clamp(lambd + rho * h, min=0) ** 2 - lambd ** 2) / (2 * rho)


def phr_penalty_grad(h: Tensor, lambd: Tensor | float, rho: Tensor | float) -> Tensor:
    """dP/dh = max(0, λ + ρh): the classical ALM multiplier update λ ← max(0, λ + ρh)."""
    return torch.clamp(lambd + rho * h, min=0)


def _as_class_vector(value: Tensor | float, like: Tensor, name: str) -> Tensor:
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 0:
        return v.expand(like.shape[1])
    if v.shape != (like.shape[1],):
        raise ValueError(f"{name} must be a scalar or have shape ({like.shape[1]},), got {tuple(v.shape)}")
    return v


def cals_penalty(logits: Tensor, multipliers: Tensor, rho: Tensor | float,
                 margin: float = DEFAULT_MARGIN) -> Tensor:
    """Mean PHR penalty over samples × classes, (1/(N·C)) Σ_ij P(h_ij; λ_j, ρ_j)
    (docs/long_tail_noisy.md#cals)."""
    h = cals_constraints(logits, margin)
    lambd = _as_class_vector(multipliers, logits, "multipliers").detach()
    rho_v = _as_class_vector(rho, logits, "rho").detach()
    return phr_penalty(h, lambd, rho_v).mean()


def cals_loss(logits: Tensor, y: Tensor, multipliers: Tensor, rho: Tensor | float,
              margin: float = DEFAULT_MARGIN) -> Tensor:
    """CALS training loss: CE(z, y) + mean PHR penalty; multipliers and ρ are constants here."""
    return F.cross_entropy(logits, y) + cals_penalty(logits, multipliers, rho, margin)


@torch.no_grad()
def update_multipliers(val_logits: Tensor, multipliers: Tensor, rho: Tensor | float,
                       margin: float = DEFAULT_MARGIN, lambd_min: float = LAMBDA_MIN,
                       lambd_max: float = LAMBDA_MAX) -> Tensor:
    """New class-wise λ from one validation pass: clamp(mean_i clamp(P'(h_ij)), λ_min, λ_max).

    The constraint involves no label, so the validation labels are not needed. Computed and
    returned in float64 (float32 would round λ_min = 1e-6 to just below the bound); non-finite
    logits are refused rather than turned into multipliers.
    """
    if not torch.isfinite(val_logits).all():
        raise ValueError("validation logits contain inf or NaN; cannot update CALS multipliers")
    if val_logits.dim() != 2 or val_logits.shape[0] == 0:
        raise ValueError(f"val_logits must be (N, C) with N > 0, got {tuple(val_logits.shape)}")
    z = val_logits.double()
    h = cals_constraints(z, margin)
    grad = phr_penalty_grad(h, _as_class_vector(multipliers, z, "multipliers"),
                            _as_class_vector(rho, z, "rho"))
    grad = torch.nan_to_num(grad, posinf=lambd_max)  # inf margins (float overflow) hit the cap
    return torch.clamp(torch.clamp(grad, lambd_min, lambd_max).mean(dim=0), lambd_min, lambd_max)


def update_rho(rho: Tensor, mean_constraints: Tensor, prev_mean_constraints: Tensor | None,
               gamma: float = 1.2, tau: float = 0.9, rho_min: float = RHO_MIN,
               rho_max: float = RHO_MAX) -> Tensor:
    """ρ_j ← γρ_j where h̄_j > τ·max(h̄_j^prev, 0) (not enough progress), clamped to [ρ_min, ρ_max].

    Without a previous value (first check) ρ is only clamped.
    """
    if prev_mean_constraints is None:
        return torch.clamp(rho, rho_min, rho_max)
    stalled = mean_constraints > tau * prev_mean_constraints.clamp(min=0)
    return torch.clamp(torch.where(stalled, gamma * rho, rho), rho_min, rho_max)


class CALSMultipliers:
    """The outer-loop state (λ, ρ, previous mean constraint) with the reference's update order.

    Call :meth:`update` once per epoch with that epoch's validation logits. As in the reference
    (``aug_lagrangian_class.py``), λ is updated every epoch, ρ every ``rho_step`` epochs, and the
    "previous" mean constraint is the previous *epoch's*, refreshed every epoch.
    """

    def __init__(self, num_classes: int, margin: float = DEFAULT_MARGIN, rho_step: int = 10,
                 gamma: float = 1.2, tau: float = 0.9, lambd_min: float = LAMBDA_MIN,
                 lambd_max: float = LAMBDA_MAX, rho_min: float = RHO_MIN,
                 rho_max: float = RHO_MAX) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.margin = float(margin)
        self.rho_step = int(rho_step)
        self.gamma, self.tau = float(gamma), float(tau)
        self.lambd_min, self.lambd_max = float(lambd_min), float(lambd_max)
        self.rho_min, self.rho_max = float(rho_min), float(rho_max)
        self.lambd = torch.full((num_classes,), self.lambd_min, dtype=torch.float64)
        self.rho = torch.full((num_classes,), self.rho_min, dtype=torch.float64)
        self.prev_constraints: Tensor | None = None

    @torch.no_grad()
    def update(self, val_logits: Tensor, epoch: int) -> None:
        """λ and (every ``rho_step`` epochs, 0-based ``epoch``) ρ from one validation pass."""
        val_logits = val_logits.detach().cpu()
        new_lambd = update_multipliers(val_logits, self.lambd, self.rho, self.margin,
                                       self.lambd_min, self.lambd_max)
        mean_h = cals_constraints(val_logits.double(), self.margin).mean(dim=0)
        if self.rho_step > 0 and (epoch + 1) % self.rho_step == 0 and self.prev_constraints is not None:
            self.rho = update_rho(self.rho, mean_h, self.prev_constraints, self.gamma,
                                  self.tau, self.rho_min, self.rho_max)
        self.prev_constraints = mean_h
        self.lambd = new_lambd

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """:func:`cals_loss` with the current λ and ρ (kept in float64, cast to the logits')."""
        return cals_loss(logits, y, self.lambd, self.rho, self.margin)
