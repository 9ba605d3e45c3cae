"""LogitClip (Wei et al., ICML 2023; docs/long_tail_noisy.md#logitclip).

Clamping the p-norm of the logit vector to τ bounds CE (and any loss of the logits), which makes
it tolerant to label noise:

    clip_τ(z) = τ · z / ‖z‖_p   if ‖z‖_p ≥ τ,   else z

That is the paper's form (``form="paper"``, the default). The official code
(hongxin001/LogitClip, ``algorithms/clip.py::LogitClipping.train_batch``) computes something else,
available as ``form="official"``:

    n = ‖z‖_p + 1e-7;   z' = z / n · (1/τ)   if n > τ,   else z

i.e. the threshold is τ but clipped vectors get norm 1/τ, not τ: the two agree only at τ = 1, and
the official map is discontinuous at ‖z‖ = τ otherwise.

Apply it only in training; test-time logits stay raw (argmax is unchanged anyway).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["LOGIT_CLIP_FORMS", "LogitClipLoss", "clip_logits"]

LOGIT_CLIP_FORMS = ("paper", "official")  # the paper's continuous form; the official code's

_OFFICIAL_NORM_EPS = 1e-7  # added to the norm in the official code


def _check(tau: float, p: float, form: str = "paper") -> None:
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1 (a norm), got {p}")
    if form not in LOGIT_CLIP_FORMS:
        raise ValueError(f"form must be one of {', '.join(LOGIT_CLIP_FORMS)}, got {form!r}")


def clip_logits(logits: Tensor, tau: float, p: float = 2, *, form: str = "paper") -> Tensor:
    """Rescale each row of ``logits`` (…, C) whose ℓp norm exceeds ``tau``.

    ``form="paper"`` (default): onto the ℓp ball of radius ``tau``, written as
    z · τ / max(‖z‖_p, τ): rows inside the ball are returned unchanged (also bit-for-bit), rows
    outside get norm τ up to rounding, the zero vector is fine, and the gradient is finite
    everywhere. ``form="official"``: the official code's operations, in its order (module
    docstring): rows with ‖z‖_p + 1e-7 > τ get norm about 1/τ. ``p`` may be ``float('inf')``.
    """
    tau = float(tau)
    _check(tau, float(p), form)
    norms = torch.linalg.vector_norm(logits, ord=p, dim=-1, keepdim=True)
    if form == "official":  # our option: the released code, discontinuous unless τ = 1
        norms = norms + _OFFICIAL_NORM_EPS
        return torch.where(norms > tau, logits / norms * (1 / tau), logits)
    scale = tau / torch.clamp(norms, min=tau)
    return torch.where(norms > tau, logits * scale, logits)


class LogitClipLoss(nn.Module):
    """``base_loss(clip_τ(logits), targets)`` for any loss of logits (CE, α-loss, GCE, ...)."""

    def __init__(self, base_loss: Callable[[Tensor, Tensor], Tensor], tau: float = 1.0,
                 p: float = 2, form: str = "paper") -> None:
        super().__init__()
        _check(float(tau), float(p), form)
        self.base_loss = base_loss
        self.tau = float(tau)
        self.p = float(p)
        self.form = form

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.base_loss(clip_logits(logits, self.tau, self.p, form=self.form), targets)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, p={self.p}, form={self.form}"
