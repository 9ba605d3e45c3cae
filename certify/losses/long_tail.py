"""Class-count-aware loss pieces for long-tailed training (docs/long_tail_noisy.md: LDAM-DRW, class
weights, VS loss, Bayias and UniMix, CDB-W and CDB-S).

Pure functions of the logits and the training class counts n_j:

- LDAM (Cao et al. 2019): margins Δ_j ∝ n_j^(-1/4), the largest equal to ``max_m``; the margin is
  taken off the true-class logit before the scale s.
- Class-balanced "effective number" weights (Cui et al. 2019), used by DRW and ABSGD.
- VS (Kini et al. 2021): Δ_j z_j + ι_j with Δ_j = (n_j/n_max)^γ and ι_j = τ·log π_j; γ = 0 is
  logit adjustment (LA), τ = 0 is CDT.
- Bayias (Xu et al. 2021): z + log π_train − log π_test, i.e. + log π_j + log C for a uniform test.
- CDB (Sinha et al. 2020): weights d_c^τ from per-class difficulty d_c = 1 − validation accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from certify.errors import UserError

__all__ = ["as_counts", "ldam_margins", "ldam_logits", "class_balanced_weights", "vs_logits",
           "bayias_logits", "parse_cdb_tau", "cdb_tau", "cdb_weights"]


def as_counts(counts: Sequence[int] | Tensor) -> Tensor:
    """Class counts as a float64 tensor; every class needs at least one training image."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.dim() != 1 or len(n) < 2 or bool((n < 1).any()):
        raise ValueError(f"class counts must list ≥ 2 classes with ≥ 1 image each, got {n.tolist()}")
    return n


def ldam_margins(counts: Sequence[int] | Tensor, max_m: float = 0.5) -> Tensor:
    """Δ_j = c / n_j^(1/4), with c such that the rarest class gets ``max_m``."""
    m = 1.0 / as_counts(counts).pow(0.25)
    return (m * (max_m / m.max())).float()


def ldam_logits(logits: Tensor, y: Tensor, margins: Tensor, s: float = 30.0) -> Tensor:
    """s · (z − Δ_y e_y): the margin comes off the true class only, before the scale."""
    shift = torch.zeros_like(logits).scatter_(1, y.view(-1, 1), margins.to(logits)[y].view(-1, 1))
    return s * (logits - shift)


CB_BETA = 0.9999  # β of the effective number (1 − β^n)/(1 − β): Cui et al. 2019's CIFAR value


def class_balanced_weights(counts: Sequence[int] | Tensor, beta: float = CB_BETA) -> Tensor:
    """w_j = (1 − β) / (1 − β^n_j), normalized so that Σ_j w_j = C."""
    n = as_counts(counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(n)).float()


def vs_logits(logits: Tensor, counts: Sequence[int] | Tensor, gamma: float = 0.3,
              tau: float = 1.0) -> Tensor:
    """Δ_j z_j + ι_j with Δ_j = (n_j / n_max)^γ and ι_j = τ log π_j."""
    n = as_counts(counts)
    delta = (n / n.max()).pow(gamma).to(logits)
    iota = (tau * torch.log(n / n.sum())).to(logits)
    return logits * delta + iota


def bayias_logits(logits: Tensor, counts: Sequence[int] | Tensor) -> Tensor:
    """z + log π_train − log π_test with a uniform test prior: z + log π_j + log C."""
    n = as_counts(counts)
    return logits + (torch.log(n / n.sum()) + math.log(len(n))).to(logits)


TAU_RULES = ("dynamic", "dynamic-imagenet")


def parse_cdb_tau(value: str | float, flag: str) -> str | float:
    """A CDB τ as given on the command line: a number, or one of :data:`TAU_RULES`."""
    if isinstance(value, (int, float)) or value in TAU_RULES:
        return value
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{flag} must be a number, dynamic or dynamic-imagenet, got {value!r}") from None


def cdb_tau(difficulty: Tensor, rule: str | float = "dynamic") -> float:
    """τ: a number, or "dynamic" (the CIFAR code: sigmoid(b), b = (1 − min d)/(1 − max d + 0.01))
    or "dynamic-imagenet" (2·sigmoid(b − 1), the ImageNet-LT code)."""
    if not isinstance(rule, str):
        return float(rule)
    b = (1.0 - difficulty.min().item()) / (1.0 - difficulty.max().item() + 0.01)
    if rule == "dynamic":
        return 1.0 / (1.0 + math.exp(-b))
    if rule == "dynamic-imagenet":
        return 2.0 / (1.0 + math.exp(-(b - 1.0)))
    raise ValueError(f"unknown CDB τ rule {rule!r}")


def cdb_weights(difficulty: Tensor, tau: float, floor: float = 0.0) -> Tensor:
    """w_c = max(d_c, floor)^τ normalized to Σ_c w_c = C (the floor keeps a class at 100% validation
    accuracy from dropping out of the loss; the reference has none)."""
    d = difficulty.double().clamp(min=floor)
    w = d.pow(tau)
    if not w.sum() > 0:  # every class perfect on validation: nothing to balance
        return torch.ones(len(d))
    return (w / w.sum() * len(d)).float()

