"""Layers of ℓ∞-distance nets: ℓp-distance neurons (fully connected and convolutional) and mean shift.

Each layer maps an input box to an output box with ``bounds(lower, upper)``: exact per neuron at
p = ∞ (the only p at which a certificate is valid). The current p is a plain attribute, set for the
whole model by :func:`set_p` before every training step (the p schedule changes it per minibatch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certify.linf_dist.bounds import linf_dist_bounds
from certify.linf_dist.ops import lp_dist

INF = float("inf")


class MeanShift(nn.Module):
    """BatchNorm without scaling or affine part (docs/linf_dist.md#mean-shift-and-initialization):
    subtract the per-channel mean.

    Training subtracts the batch mean, with the gradient flowing through it; evaluation subtracts
    the running mean (momentum 0.1), a translation, so the layer stays 1-Lipschitz.
    """

    running_mean: Tensor

    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, y: Tensor) -> Tensor:
        if not self.training:
            return y - self._shaped(self.running_mean, y)
        mean = y.mean(dim=[0, *range(2, y.dim())])
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
        return y - self._shaped(mean, y)

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        shift = self._shaped(self.running_mean, lower)
        return lower - shift, upper - shift

    @staticmethod
    def _shaped(mean: Tensor, like: Tensor) -> Tensor:
        return mean.view(1, -1, *([1] * (like.dim() - 2)))


def identity_init_(weight: Tensor, in_channels: int, kernel_area: int = 1, value: float = 10.0) -> None:
    """Output o copies input channel ``o mod in_channels`` (plus a constant the mean shift removes)
    by a weight of −value at the kernel centre; only when in_channels ≤ out_channels
    (docs/linf_dist.md#mean-shift-and-initialization)."""
    out_channels = weight.shape[0]
    if in_channels > out_channels:
        return
    rows = torch.arange(out_channels)
    with torch.no_grad():
        weight[rows, (rows % in_channels) * kernel_area + kernel_area // 2] = -value


class _LpDistBase(nn.Module):
    """Weights (out, fan_in) ~ N(0, 1), an optional bias (the last layer's, zero-initialised) and an
    optional mean shift (every hidden layer), as in the references."""

    def __init__(self, fan_in: int, out_features: int, *, bias: bool, mean_shift: bool, p: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, fan_in))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.mean_shift = MeanShift(out_features) if mean_shift else None
        self.p = p

    def _finish(self, y: Tensor) -> Tensor:
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * (y.dim() - 2)))
        return self.mean_shift(y) if self.mean_shift is not None else y

    def _finish_bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        if self.bias is not None:
            b = self.bias.view(1, -1, *([1] * (lower.dim() - 2)))
            lower, upper = lower + b, upper + b
        return self.mean_shift.bounds(lower, upper) if self.mean_shift is not None else (lower, upper)

    def _check_inf(self) -> None:
        if not math.isinf(self.p):
            raise RuntimeError(f"interval bounds need p = inf, but this layer has p = {self.p}")


class LpDistLinear(_LpDistBase):
    """``y_o = ‖x − w_o‖_p (+ b_o)`` on flattened inputs, then the optional mean shift."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False,
                 mean_shift: bool = True, identity_value: float | None = 10.0, p: float = 8.0):
        super().__init__(in_features, out_features, bias=bias, mean_shift=mean_shift, p=p)
        if identity_value is not None:
            identity_init_(self.weight, in_features, 1, identity_value)

    def forward(self, x: Tensor) -> Tensor:
        return self._finish(lp_dist(x.flatten(1), self.weight, self.p))

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        self._check_inf()
        return self._finish_bounds(*linf_dist_bounds(lower.flatten(1), upper.flatten(1), self.weight))

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.weight.shape[0]}, p={self.p}, "
                f"bias={self.bias is not None}")


class LpDistConv2d(_LpDistBase):
    """Convolution by unfolding (docs/linf_dist.md#neurons-and-networks): each output pixel is the
    ℓp distance between the (zero-padded) input patch and the filter."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, bias: bool = False, mean_shift: bool = True,
                 identity_value: float | None = 10.0, p: float = 8.0):
        super().__init__(in_channels * kernel_size ** 2, out_channels, bias=bias,
                         mean_shift=mean_shift, p=p)
        self.in_channels, self.kernel_size, self.stride, self.padding = (
            in_channels, kernel_size, stride, padding)
        if identity_value is not None:
            identity_init_(self.weight, in_channels, kernel_size ** 2, identity_value)

    def _patches(self, x: Tensor) -> tuple[Tensor, int, int]:
        """(B·L, C·k·k) rows, one per output position, and the output height and width."""
        height = (x.shape[2] + 2 * self.padding - self.kernel_size) // self.stride + 1
        width = (x.shape[3] + 2 * self.padding - self.kernel_size) // self.stride + 1
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1]), height, width

    def _fold(self, rows: Tensor, batch: int, height: int, width: int) -> Tensor:
        return rows.view(batch, height * width, -1).transpose(1, 2).reshape(batch, -1, height, width)

    def forward(self, x: Tensor) -> Tensor:
        rows, height, width = self._patches(x)
        y = lp_dist(rows, self.weight, self.p)
        return self._finish(self._fold(y, x.shape[0], height, width))

    def bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        self._check_inf()
        (lo, height, width), (hi, _, _) = self._patches(lower), self._patches(upper)
        lb, ub = linf_dist_bounds(lo, hi, self.weight)
        batch = lower.shape[0]
        return self._finish_bounds(self._fold(lb, batch, height, width), self._fold(ub, batch, height, width))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, p={self.p}")


def set_p(model: nn.Module, p: float) -> None:
    """Set p on every ℓp-distance layer of ``model`` (p = inf for evaluation and certification)."""
    for module in model.modules():
        if isinstance(module, _LpDistBase):
            module.p = float(p)


def get_p(model: nn.Module) -> float | None:
    """The p of the model's first ℓp-distance layer (None if it has none)."""
    for module in model.modules():
        if isinstance(module, _LpDistBase):
            return module.p
    return None
