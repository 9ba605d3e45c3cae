"""UniMix (Xu et al., NeurIPS 2021; ``core.py::unimix`` of XuZhengzhuo/Prior-LT): mixup that
favours the tail (docs/long_tail_noisy.md#bayias-and-unimix).

Every example i of the batch gets a partner j drawn from the same batch, with replacement, with
probability ∝ n_{y_j}^τ (τ = −0.5 favours rare classes). The weight on x_i is
λ = (ξ* + b) mod 1 with ξ* = n_{y_j}/(n_{y_i} + n_{y_j}) and b ~ Beta(α, α): with α < 1 the
Beta's mass near 0 and near 1 both land near ξ* on the circle, so λ concentrates at ξ* and the
rarer of the two images dominates the mix. Draws come from torch's global generator, which the
trainer seeds and checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MixedTargets", "UniMix", "unimix_partners", "unimix_factor"]


@dataclass
class MixedTargets:
    """Labels of a mixed batch: the loss is λ·L(x̃, y_a) + (1 − λ)·L(x̃, y_b), per example."""

    y_a: Tensor
    y_b: Tensor
    lam: Tensor


def unimix_partners(y: Tensor, counts: Tensor, tau: float) -> Tensor:
    """Partner index per example: drawn in the batch with replacement, ∝ n_{y_j}^τ."""
    prob = counts.to(torch.float64)[y.cpu()].pow(tau)
    return torch.multinomial(prob / prob.sum(), len(y), replacement=True).to(y.device)


def unimix_factor(y_a: Tensor, y_b: Tensor, counts: Tensor, alpha: float) -> Tensor:
    """λ = (n_b/(n_a + n_b) + Beta(α, α)) mod 1, the weight on the first image."""
    n = counts.to(torch.float64)
    n_a, n_b = n[y_a.cpu()], n[y_b.cpu()]
    xi = n_b / (n_a + n_b)
    b = torch.distributions.Beta(torch.tensor(float(alpha), dtype=torch.float64),
                                 torch.tensor(float(alpha), dtype=torch.float64)).sample(xi.shape)
    lam = xi + b
    return torch.where(lam > 1, lam - 1, lam).to(y_a.device)


class UniMix:
    """Mixes each batch for the epochs before ``stop_epoch`` (None: the whole run, as the reference's
    ``mix_stop_epoch`` = total epochs)."""

    def __init__(self, alpha: float = 0.8, tau: float = -0.5, stop_epoch: int | None = None):
        if not 0 < alpha < 1:
            raise ValueError(f"UniMix α must be in (0, 1) for λ to concentrate at ξ*, got {alpha}")
        self.alpha, self.tau, self.stop_epoch = float(alpha), float(tau), stop_epoch
        self.active = True

    def start_epoch(self, epoch: int) -> None:
        self.active = self.stop_epoch is None or epoch < self.stop_epoch

    def __call__(self, x: Tensor, y: Tensor, counts: Tensor) -> tuple[Tensor, MixedTargets | Tensor]:
        if not self.active:
            return x, y
        j = unimix_partners(y, counts, self.tau)
        lam = unimix_factor(y, y[j], counts, self.alpha).to(x.dtype)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return lam.view(shape) * x + (1 - lam.view(shape)) * x[j], MixedTargets(y, y[j], lam)

    def params(self) -> dict[str, Any]:
        return {"unimix_alpha": self.alpha, "unimix_tau": self.tau, "unimix_stop": self.stop_epoch}
