"""The loss on (logits, labels) that the classification objectives train with.

One object per run, so every objective that ends in "logits vs labels" (plain training, Gaussian
augmentation) gets the same choices: cross-entropy with optional label smoothing, the α-loss
(Sypherd et al. 2022), or CALS (Liu et al. 2023, class-wise multipliers updated after every epoch
from a validation pass), each optionally on LogitClip'ed logits (Wei et al. 2023). Spec
imbalance_noise.md §4, §6, §9.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certify.errors import UserError
from certify.losses import CALSMultipliers, alpha_loss, clip_logits

LOSSES = ("ce", "alpha", "cals")


class LabelLoss:
    """``loss(logits, y)`` with the chosen base loss; ``after_epoch`` updates CALS's multipliers."""

    def __init__(self, loss: str = "ce", label_smoothing: float = 0.0, alpha: float = 1.0,
                 logit_clip: float | None = None, logit_clip_p: float = 2.0,
                 cals_margin: float = 10.0):
        if loss not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if not 0 <= label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        if label_smoothing and loss != "ce":
            raise UserError("--label-smoothing applies to --loss ce only")
        if not alpha > 0:
            raise UserError(f"--alpha must be positive (inf allowed), got {alpha}")
        if logit_clip is not None and not logit_clip > 0:
            raise UserError(f"--logit-clip must be positive, got {logit_clip}")
        if not cals_margin > 0:
            raise UserError(f"--cals-margin must be positive, got {cals_margin}")
        self.loss, self.label_smoothing, self.alpha = loss, float(label_smoothing), float(alpha)
        self.logit_clip = None if logit_clip is None else float(logit_clip)
        self.logit_clip_p, self.cals_margin = float(logit_clip_p), float(cals_margin)
        self.cals: CALSMultipliers | None = None

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.logit_clip is not None:  # training only: test-time logits stay as they are
            logits = clip_logits(logits, self.logit_clip, self.logit_clip_p)
        if self.loss == "alpha":
            return alpha_loss(logits, y, self.alpha)
        if self.loss == "cals":
            if self.cals is None:
                self.cals = CALSMultipliers(logits.shape[1], margin=self.cals_margin)
            return self.cals.loss(logits, y)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def after_epoch(self, model: nn.Module, validation: Any, epoch: int, device: torch.device) -> None:
        """CALS: new multipliers from the validation logits (its labels are not used)."""
        if self.loss != "cals":
            return
        if validation is None:
            raise UserError("--loss cals needs a validation split: pass --val-count N")
        from torch.utils.data import DataLoader

        model.eval()
        logits = torch.cat([model(x.to(device)).float().cpu() for x, _ in DataLoader(validation, 1000)])
        if self.cals is None:
            self.cals = CALSMultipliers(logits.shape[1], margin=self.cals_margin)
        self.cals.update(logits, epoch)

    def needs_validation(self) -> bool:
        return self.loss == "cals"

    def state_dict(self) -> dict[str, Any]:
        """CALS's outer-loop state, so that a resumed run continues it exactly."""
        if self.cals is None:
            return {}
        return {"lambd": self.cals.lambd, "rho": self.cals.rho, "prev": self.cals.prev_constraints}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.cals = CALSMultipliers(len(state["lambd"]), margin=self.cals_margin)
            self.cals.lambd, self.cals.rho, self.cals.prev_constraints = (
                state["lambd"], state["rho"], state["prev"])

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"loss": self.loss}
        if self.loss == "ce" and self.label_smoothing:
            params["label_smoothing"] = self.label_smoothing
        if self.loss == "alpha":
            params["alpha"] = self.alpha if math.isfinite(self.alpha) else "inf"
        if self.loss == "cals":
            params["cals_margin"] = self.cals_margin
        if self.logit_clip is not None:
            params |= {"logit_clip": self.logit_clip, "logit_clip_p": self.logit_clip_p}
        return params


class WithLabelLoss:
    """Mixin for objectives that hold a ``self.label_loss``: the trainer's per-epoch hook and the
    resume state go to it (CALS's multipliers; nothing for the other losses)."""

    label_loss: LabelLoss

    def after_epoch(self, model: nn.Module, validation: Any, epoch: int, device: torch.device) -> None:
        self.label_loss.after_epoch(model, validation, epoch, device)

    def state_dict(self) -> dict[str, Any]:
        return self.label_loss.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.label_loss.load_state_dict(state)
