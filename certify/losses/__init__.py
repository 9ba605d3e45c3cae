"""Loss functions on logits for noisy labels and calibration (spec ``imbalance_noise.md`` §4, §6, §9).

These are plain functions and ``nn.Module`` wrappers; the objectives that put them in the trainer
come later. Each module holds one method:

- :mod:`certify.losses.alpha_loss`: α-loss, the tunable family between CE, exponential and 0-1 loss.
- :mod:`certify.losses.logit_clip`: LogitClip, bounding the logit norm around any loss.
- :mod:`certify.losses.cals`: CALS, class-wise augmented-Lagrangian logit-margin penalty.
"""

from certify.losses.alpha_loss import AlphaLoss, alpha_loss
from certify.losses.cals import (
    CALSMultipliers,
    cals_constraints,
    cals_loss,
    cals_penalty,
    phr_penalty,
    phr_penalty_grad,
    update_multipliers,
    update_rho,
)
from certify.losses.logit_clip import LogitClipLoss, clip_logits

__all__ = [
    "AlphaLoss",
    "CALSMultipliers",
    "LogitClipLoss",
    "alpha_loss",
    "cals_constraints",
    "cals_loss",
    "cals_penalty",
    "clip_logits",
    "phr_penalty",
    "phr_penalty_grad",
    "update_multipliers",
    "update_rho",
]
