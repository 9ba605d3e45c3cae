"""ℓ∞-distance nets: the pure net (Zhang et al. 2021/2022) and the hybrid net with an MLP head.

Both map a (normalized) image to logits and to bounds on every logit margin over an input box, which
is what certification needs: ``margin_lower_bounds(lower, upper, y)[b, j]`` ≤ g_y − g_j for every
input in the box. The pure net is 1-Lipschitz per logit w.r.t. ℓ∞ at p = ∞, so a margin M certifies
the ball of radius M/2 in normalized units; the hybrid net is certified by interval bounds.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from certify.data.registry import DatasetInfo
from certify.linf_dist.layers import LpDistLinear

Shape = tuple[int, ...]

# The references' input statistics (docs/linf_dist.md#input-normalization): per-channel mean,
# one scalar std per dataset.
def linf_normalization(info: DatasetInfo) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of an ℓ∞ model on ``info``: the reference's values (``info.linf_mean``,
    ``info.linf_std``), else the dataset's own mean and the average of its stds (one value for
    every channel, so the ℓ∞ ball stays a ball)."""
    channels = info.input_shape[0]
    std = info.linf_std if info.linf_std is not None else sum(info.std) / len(info.std)
    mean = info.linf_mean if info.linf_mean is not None else info.mean
    return mean, (std,) * channels


def _dist_stack(in_features: int, width: int, count: int, identity_value: float) -> list[LpDistLinear]:
    """``count`` hidden ℓp-distance layers (no bias, mean shift): in_features → width → … → width."""
    return [LpDistLinear(in_features if i == 0 else width, width, identity_value=identity_value)
            for i in range(count)]


def _propagate(layers: nn.ModuleList, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    lower, upper = lower.flatten(1), upper.flatten(1)
    for layer in layers:
        lower, upper = cast(LpDistLinear, layer).bounds(lower, upper)  # ModuleList yields nn.Module
    return lower, upper


class LinfDistNet(nn.Module):
    """``depth`` ℓp-distance layers: depth − 1 hidden of ``width`` neurons with mean shift, then one
    with a bias; the logits are the negated last distances, ``g = −d⁽ᴸ⁾``
    (docs/linf_dist.md#neurons-and-networks).

    ``scalar=True`` adds the learnable logit scale s of the v2 objective (used only by the loss).
    """

    def __init__(self, input_shape: Shape, num_classes: int, depth: int = 5, width: int = 5120,
                 identity_value: float = 10.0, scalar: bool = False):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        in_features = math.prod(input_shape)
        self.layers = nn.ModuleList([*_dist_stack(in_features, width, depth - 1, identity_value),
                                     LpDistLinear(width, num_classes, bias=True, mean_shift=False,
                                                  identity_value=identity_value)])
        self.logit_scale = nn.Parameter(torch.ones(1)) if scalar else None

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return -x

    def logit_bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        lb, ub = _propagate(self.layers, lower, upper)
        return -ub, -lb

    def margin_lower_bounds(self, lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
        """Lower bounds of g_y − g_j over the box (the y column is 0): lb(g_y) − ub(g_j)."""
        lb, ub = self.logit_bounds(lower, upper)
        margins = lb.gather(1, y[:, None]) - ub
        return margins.scatter(1, y[:, None], 0.0)


class BoundHead(nn.Module):
    """Linear → tanh → linear, with interval propagation; the last layer bounds the margins
    directly through the rows W_y − W_j (tighter than subtracting two intervals)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int):
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, num_classes)
        # N(0, 1/fan_in) weights, zero bias (docs/linf_dist.md#hybrid-net)
        for layer in (self.hidden, self.out):
            nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.out(torch.tanh(self.hidden(features)))

    def margin_lower_bounds(self, lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        centre = self.hidden(centre)
        radius = radius @ self.hidden.weight.abs().t()
        lo, hi = torch.tanh(centre - radius), torch.tanh(centre + radius)
        centre, radius = (hi + lo) / 2, (hi - lo) / 2
        w, b = self.out.weight, self.out.bias
        rows = w[y][:, None, :] - w[None, :, :]  # (B, K, hidden): W_y − W_j
        offsets = b[y][:, None] - b[None, :]
        return (torch.einsum("bkh,bh->bk", rows, centre) + offsets
                - torch.einsum("bkh,bh->bk", rows.abs(), radius))


class LinfDistHybrid(nn.Module):
    """ℓ∞-dist Net+MLP (docs/linf_dist.md#hybrid-net): ``dist_depth`` ℓp-distance layers of ``width`` neurons
    (all with mean shift), then :class:`BoundHead` with ``hidden`` tanh units."""

    def __init__(self, input_shape: Shape, num_classes: int, dist_depth: int = 5, width: int = 5120,
                 hidden: int = 512, identity_value: float = 10.0):
        super().__init__()
        if dist_depth < 1:
            raise ValueError(f"dist_depth must be at least 1, got {dist_depth}")
        self.layers = nn.ModuleList(_dist_stack(math.prod(input_shape), width, dist_depth, identity_value))
        self.head = BoundHead(width, hidden, num_classes)

    def features(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def margin_lower_bounds(self, lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
        lb, ub = _propagate(self.layers, lower, upper)
        return self.head.margin_lower_bounds(lb, ub, y).scatter(1, y[:, None], 0.0)
