"""Loss functions on logits for noisy labels, calibration and long-tailed data
(docs/long_tail_noisy.md).

These are plain functions and ``nn.Module`` wrappers; ``certify.objectives.label_loss`` puts them in
the trainer. Each module holds one method:

- :mod:`certify.losses.alpha_loss`: α-loss, the tunable family between CE, exponential and 0-1 loss.
- :mod:`certify.losses.logit_clip`: LogitClip, bounding the logit norm around any loss.
- :mod:`certify.losses.cals`: CALS, class-wise augmented-Lagrangian logit-margin penalty.
- :mod:`certify.losses.long_tail`: LDAM margins, class-balanced weights, VS, Bayias, CDB weights.
- :mod:`certify.losses.absgd`: ABSGD's attentional per-example weights.
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
from certify.losses.logit_clip import LOGIT_CLIP_FORMS, LogitClipLoss, clip_logits

__all__ = [
    "LOGIT_CLIP_FORMS",
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
