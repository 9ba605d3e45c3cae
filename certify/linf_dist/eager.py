"""Chunked eager backend of ``lp_dist``: correct everywhere, used where no faster path applies.

Every backend implements the same three functions with the same numerics (docs/linf_dist.md#numerics),
so the autograd function in ``ops`` can call any of them:

- ``forward(x, w, p)`` for finite p ≥ 1. For p ≤ 10 one unnormalized pass,
  ``y = max(Σ|d|^p, FLT_MIN)^(1/p)`` (as the v2 reference kernels do); for p > 10 the stable form
  ``y = m·(Σ(|d|/m)^p)^(1/p)`` with ``m = max(max|d|, 1e-10)``.
- ``forward_inf(x, w, with_index)``: ``y = max|d|`` and, if asked, a signed int64 index of the
  first maximal coordinate i: ``i`` where ``d_i ≥ 0`` and ``−(i + 1)`` where ``d_i < 0``.
- ``backward(x, w, y, grad_y, p)``: with ``q = d / y``,
  ``t = grad_y·sign(q)·|q|^(p−1)``, ``grad_x = Σ_o t`` and ``grad_w = −Σ_b t``.

Here the B×CO×CI tensor is built one chunk of outputs at a time, so memory stays near
``chunk_elements`` floats whatever the shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from certify.linf_dist import usage

TINY = 1e-10
FLT_MIN = 1.1754944e-38
NORMALIZE_ABOVE_P = 10.0  # the v2 kernels' MIN_NORMALIZED_P
CHUNK_ELEMENTS = 1 << 24


def _chunks(x: Tensor, w: Tensor):
    step = max(1, CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[1]))
    for start in range(0, w.shape[0], step):
        yield start, start + step, x[:, None, :] - w[None, start:start + step, :]


def forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    usage.record("eager")
    y = x.new_empty(x.shape[0], w.shape[0])
    for lo, hi, d in _chunks(x, w):
        a = d.abs_()
        if p <= NORMALIZE_ABOVE_P:
            y[:, lo:hi] = a.pow_(p).sum(-1).clamp_min_(FLT_MIN).pow_(1.0 / p)
        else:
            m = a.amax(-1, keepdim=True).clamp_min_(TINY)
            y[:, lo:hi] = a.div_(m).pow_(p).sum(-1).pow_(1.0 / p).mul_(m.squeeze(-1))
    return y


def forward_inf(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    usage.record("eager")
    y = x.new_empty(x.shape[0], w.shape[0])
    index = torch.empty(y.shape, dtype=torch.int64, device=x.device) if with_index else None
    for lo, hi, d in _chunks(x, w):
        values, where = d.abs().max(-1)  # the first maximal index on ties
        y[:, lo:hi] = values
        if index is not None:
            negative = d.gather(-1, where[..., None]).squeeze(-1) < 0
            index[:, lo:hi] = torch.where(negative, -where - 1, where)
    return y, index


def backward(x: Tensor, w: Tensor, y: Tensor, grad_y: Tensor, p: float) -> tuple[Tensor, Tensor]:
    usage.record("eager")
    grad_x = torch.zeros_like(x)
    grad_w = torch.empty_like(w)
    inv = 1.0 / y.clamp_min(TINY)
    for lo, hi, d in _chunks(x, w):
        q = d.mul_(inv[:, lo:hi, None])
        t = q.abs().pow_(p - 1.0).mul_(q.sign()).mul_(grad_y[:, lo:hi, None])
        grad_x += t.sum(1)
        grad_w[lo:hi] = -t.sum(0)
    return grad_x, grad_w
