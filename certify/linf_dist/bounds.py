"""Interval bounds through an ℓ∞-distance layer: exact per neuron (docs/linf_dist.md#interval-bounds).

For a box lower ≤ x ≤ upper with centre c and half-width r,
``max_x ‖x − w‖∞ = max_i |c_i − w_i| + r_i`` and ``min_x ‖x − w‖∞ = max(max_i |c_i − w_i| − r_i, 0)``
(floored at 1e-10 as in the references). Certification only: no gradient, chunked over outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

TINY = 1e-10
CHUNK_ELEMENTS = 1 << 24


@torch.no_grad()
def linf_dist_bounds(lower: Tensor, upper: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """(lb, ub) of ``‖x − weight[o]‖∞`` over the box, for lower/upper (B, CI) and weight (CO, CI)."""
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper differ in shape: {tuple(lower.shape)} vs {tuple(upper.shape)}")
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    lb = lower.new_empty(lower.shape[0], weight.shape[0])
    ub = torch.empty_like(lb)
    step = max(1, CHUNK_ELEMENTS // max(1, lower.numel()))
    for start in range(0, weight.shape[0], step):
        a = (centre[:, None, :] - weight[None, start:start + step, :]).abs_()
        ub[:, start:start + step] = (a + radius[:, None, :]).amax(-1)
        lb[:, start:start + step] = (a - radius[:, None, :]).amax(-1).clamp_min_(TINY)
    return lb, ub
