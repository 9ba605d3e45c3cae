"""Plain supervised training on clean inputs with a :class:`LabelLoss` (no certificate): the
baseline and the noisy-label / calibration methods on their own (docs/long_tail_noisy.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from certify.objectives.label_loss import LABEL_LOSS_OPTIONS, LabelLoss, WithLabelLoss


class Classify(WithLabelLoss):
    """Cross-entropy (or α-loss, CALS, label smoothing, LogitClip) on the clean training images."""

    name = "classify"
    summary = "the label loss on clean images (no certificate)"
    options = LABEL_LOSS_OPTIONS

    def __init__(self, **loss_options: Any):
        self.label_loss = LabelLoss(**loss_options)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        x, targets = self.label_loss.mix(x, y)
        logits = model(x)
        loss = self.label_loss(logits, targets)
        return loss, {"correct": (logits.argmax(1) == y).sum().item()}

    def certification(self) -> dict[str, Any]:
        return {"kind": "none"}

    def params(self) -> dict[str, Any]:
        return self.label_loss.params()
