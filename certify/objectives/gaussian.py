"""Gaussian data augmentation (Cohen et al. 2019): cross-entropy on x + N(0, σ²I).

The loss on the noisy logits is a :class:`LabelLoss`, so noisy-label, calibration and long-tailed
losses (α-loss, CALS, LogitClip, label smoothing, LDAM, VS, Bayias, class weights, UniMix,
ABSGD) compose with certified training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from certify.objectives.label_loss import LABEL_LOSS_OPTIONS, LabelLoss, WithLabelLoss
from certify.params import Param

SIGMA = Param("sigma", 0.25, "Smoothing objectives: noise level σ in [0,1] pixel units; certify with the "
              "same σ.", above=0, reference="Cohen et al. 2019")


class GaussianAugmentation(WithLabelLoss):
    """Train the base classifier on noisy inputs, with the noise its smoothed version will see.

    As in the reference, the noise is added in pixel space (normalization is inside the model) and
    the noisy input is not clamped to [0, 1].
    """

    name = "gaussian"
    summary = "Gaussian data augmentation for randomized smoothing (Cohen et al. 2019)"
    options = (SIGMA, *LABEL_LOSS_OPTIONS)
    always_recorded = ("sigma",)

    def __init__(self, sigma: float = SIGMA.default, **loss_options: Any):
        self.sigma = float(SIGMA.check(sigma))
        self.label_loss = LabelLoss(**loss_options)  # cross-entropy unless told otherwise

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        x, targets = self.label_loss.mix(x, y)  # UniMix (if on) mixes the clean images, then noise
        logits = model(x + torch.randn_like(x) * self.sigma)
        loss = self.label_loss(logits, targets)
        return loss, {"ce": loss.item(), "correct": (logits.argmax(1) == y).sum().item()}

    def certification(self) -> dict[str, Any]:
        return {"kind": "smoothing", "sigma": self.sigma}

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, **self.label_loss.params()}
