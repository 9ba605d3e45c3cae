"""ABSGD (Qi et al., TMLR 2023): momentum SGD on an attentionally re-weighted mini-batch loss.

Each example's weight is ∝ exp(ℓ_i/λ), normalized by a running average u of the batch means of
exp(ℓ/λ) (docs/long_tail_noisy.md#absgd, ``mylosses.py::ABSGD`` of qiqi-helloworld/ABSGD):

    u ← (1 − γ)·u + γ·α·mean_B exp(ℓ/λ),    p_i = exp(ℓ_i/λ) / (u·B)  (detached),    loss = Σ p_i ℓ_i

λ > 0 up-weights hard examples (imbalance); λ < 0 down-weights them (label noise). λ ≥ 200 is plain
ERM (the reference's first stage). Unlike the reference, u is kept as log u and updated with
logsumexp, so exp(ℓ/λ) never overflows for small λ, and u carries no autograd history.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["ABSGDWeighting", "ERM_LAMBDA"]

ERM_LAMBDA = 200.0  # the reference treats λ ≥ 200 as plain SGD (p_i = 1/B)


class ABSGDWeighting:
    """Reduces per-example losses to ABSGD's weighted sum; ``start_epoch`` applies the two-stage λ.

    Defaults are the reference ``train.py``'s: λ = 1 after ``lambda_epoch`` = 160 (λ = 10 before),
    γ = 0.1 (``drogamma``), α = 0.5 (``abAlpha``).
    """

    def __init__(self, lam: float = 1.0, init_lambda: float = 10.0, lambda_epoch: int = 160,
                 gamma: float = 0.1, alpha: float = 0.5):
        for name, value in (("lambda", lam), ("init_lambda", init_lambda)):
            if value == 0 or not math.isfinite(value):
                raise ValueError(f"ABSGD {name} must be a non-zero number, got {value}")
        if not 0 < gamma <= 1:
            raise ValueError(f"ABSGD γ must be in (0, 1], got {gamma}")
        if not alpha > 0:
            raise ValueError(f"ABSGD α must be positive, got {alpha}")
        self.lam, self.init_lambda, self.lambda_epoch = float(lam), float(init_lambda), int(lambda_epoch)
        self.gamma, self.alpha = float(gamma), float(alpha)
        self.current = self.init_lambda
        self.log_u: float | None = None  # log of the running normalizer; None before the first step

    def start_epoch(self, epoch: int) -> None:
        self.current = self.init_lambda if epoch < self.lambda_epoch else self.lam

    def weights(self, losses: Tensor) -> Tensor:
        """p_i for the batch (detached), updating u; uniform 1/B in the ERM stage."""
        b = losses.numel()
        if self.current >= ERM_LAMBDA:
            return torch.full_like(losses, 1.0 / b).detach()
        scaled = losses.detach().double() / self.current
        log_mean = (torch.logsumexp(scaled, 0) - math.log(b)).item()
        fresh = math.log(self.gamma * self.alpha) + log_mean
        if self.log_u is None or self.gamma == 1:
            self.log_u = fresh
        else:
            self.log_u = float(torch.logaddexp(torch.tensor(math.log1p(-self.gamma) + self.log_u),
                                               torch.tensor(fresh)))
        return torch.exp(scaled - self.log_u - math.log(b)).to(losses.dtype)

    def reduce(self, losses: Tensor) -> Tensor:
        return (self.weights(losses) * losses).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"log_u": self.log_u, "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_u, self.current = state.get("log_u"), state.get("current", self.current)

    def params(self) -> dict[str, Any]:
        return {"lambda": self.lam, "init_lambda": self.init_lambda, "lambda_epoch": self.lambda_epoch,
                "gamma": self.gamma, "alpha": self.alpha}
