"""Deterministic ℓ∞ certificates of ℓ∞-distance nets, in pixel units (``certify run`` uses them
through the ``linf-bounds`` method, ``certify/methods/linf_bounds.py``).

Two certificates (``bound``):

- ``lipschitz``: the pure net is 1-Lipschitz per logit w.r.t. ℓ∞ in normalized units, so with the
  model's scalar input std σ the prediction cannot change on the pixel ball of radius σ·margin/2.
  One forward pass per batch (docs/linf_dist.md#lipschitz-margin).
- ``interval``: interval bounds over the pixel box ``[x − ε, x + ε] ∩ [0, 1]`` (exact per ℓ∞-dist
  neuron, then through the MLP head for the hybrid net, docs/linf_dist.md#interval-bounds); the
  radius is the largest ε the bounds certify, found by bisection. Boxes grow with ε and interval
  bounds are monotone in the box, so every ε below the returned value is certified too. Never
  looser than ``lipschitz``; slower.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from torch import Tensor, nn

from certify.linf_dist.layers import INF
from certify.nets.normalize import NormalizeLayer

BOUNDS = ("auto", "lipschitz", "interval")


class _MarginNet(Protocol):
    """The ℓ∞-dist net that :func:`split_model` checks for (``LinfDistNet``, ``LinfDistHybrid``)."""

    def margin_lower_bounds(self, lower: Tensor, upper: Tensor, y: Tensor) -> Tensor: ...


def split_model(model: nn.Module) -> tuple[NormalizeLayer, nn.Module]:
    """(normalization, ℓ∞-dist net) of a model built by ``certify.nets.build_model``."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    if not (isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], NormalizeLayer)
            and hasattr(model[1], "margin_lower_bounds")):
        raise TypeError("expected Sequential(NormalizeLayer, ℓ∞-dist net) from certify.nets.build_model")
    return model[0], model[1]


def input_std(model: nn.Module) -> float:
    """The one std the model divides every channel by: normalized units = pixel units / std."""
    std = split_model(model)[0].std.flatten()
    if not torch.all(std == std[0]):
        raise ValueError(f"an ℓ∞ model needs one std for all channels, got {std.tolist()}")
    return float(std[0])


@torch.no_grad()
def lipschitz_radii(model: nn.Module, logits: Tensor) -> Tensor:
    """Certified ℓ∞ pixel radii σ·(g_top − g_second)/2 of the predicted classes (p must be ∞)."""
    top2 = logits.topk(2, dim=1).values
    return input_std(model) * (top2[:, 0] - top2[:, 1]) / 2


@torch.no_grad()
def interval_margins(model: nn.Module, x: Tensor, eps: Tensor, y: Tensor) -> Tensor:
    """Lower bounds of g_y − g_j over the clipped pixel box of half-width ``eps`` (one per example)."""
    normalize, net = split_model(model)
    eps = eps.view(-1, *([1] * (x.dim() - 1)))
    lower, upper = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    return cast(_MarginNet, net).margin_lower_bounds(normalize(lower), normalize(upper), y)


@torch.no_grad()
def interval_radii(model: nn.Module, x: Tensor, y: Tensor, iterations: int = 16) -> Tensor:
    """The largest ε in [0, 1] (to 2^-iterations) at which interval bounds certify class y."""
    lo = torch.zeros(len(x), device=x.device)
    hi = torch.ones(len(x), device=x.device)
    certified = _certified(model, x, lo, y)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = _certified(model, x, mid, y)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    whole = _certified(model, x, hi, y)  # certified on all of [0, 1]^d
    return torch.where(whole, hi, torch.where(certified, lo, torch.zeros_like(lo)))


def _certified(model: nn.Module, x: Tensor, eps: Tensor, y: Tensor) -> Tensor:
    margins = interval_margins(model, x, eps, y).scatter(1, y[:, None], INF)
    return margins.amin(1) > 0
