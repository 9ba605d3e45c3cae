"""Plain PyTorch ℓp-distance: the ground truth the fast paths are tested against.

It materializes the B×CO×CI difference tensor, so it is only for small shapes (tests, checks).
Numerics follow docs/linf_dist.md#numerics: normalize by the row max for finite p, and at p = ∞
route the gradient to the first maximal coordinate only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TINY = 1e-10  # the references' floor on the max |x - w| (keeps y > 0 and the backward finite)


def lp_dist_reference(x: Tensor, weight: Tensor, p: float) -> Tensor:
    """``y[b, o] = ‖x[b] − weight[o]‖_p`` for x (B, CI), weight (CO, CI); differentiable."""
    a = (x[:, None, :] - weight[None, :, :]).abs()
    if math.isinf(p):
        first = a.argmax(dim=-1, keepdim=True)  # torch returns the first maximal index
        return a.gather(-1, first).squeeze(-1)
    m = a.detach().amax(dim=-1, keepdim=True).clamp_min(TINY)
    return m.squeeze(-1) * (a / m).pow(p).sum(-1).pow(1.0 / p)


def linf_dist_bounds_reference(lower: Tensor, upper: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Exact bounds of ``‖x − w_o‖∞`` over the box lower ≤ x ≤ upper (docs/linf_dist.md#interval-bounds)."""
    w = weight[None, :, :]
    l, u = lower[:, None, :], upper[:, None, :]
    ub = torch.maximum(w - l, u - w).amax(-1)
    lb = torch.maximum(l - w, w - u).amax(-1).clamp_min(TINY)
    return lb, ub
