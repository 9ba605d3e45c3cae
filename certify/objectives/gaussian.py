"""Gaussian data augmentation (Cohen et al. 2019): cross-entropy on x + N(0, σ²I)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from certify.errors import UserError


class GaussianAugmentation:
    """Train the base classifier on noisy inputs, with the noise its smoothed version will see.

    As in the reference, the noise is added in pixel space (normalization is inside the model) and
    the noisy input is not clamped to [0, 1].
    """

    name = "gaussian"
    steps_per_batch = 1

    def __init__(self, sigma: float = 0.25):
        if not sigma > 0:
            raise UserError(f"--sigma must be positive for Gaussian augmentation, got {sigma}")
        self.sigma = float(sigma)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(x + torch.randn_like(x) * self.sigma)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": loss.item(), "correct": (logits.argmax(1) == y).sum().item()}

    def certification(self) -> dict[str, Any]:
        return {"kind": "smoothing", "sigma": self.sigma}

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}
