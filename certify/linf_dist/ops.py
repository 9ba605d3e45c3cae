"""``lp_dist``: the ℓp-distance layer's operation, with a custom autograd function.

``lp_dist(x, weight, p)[b, o] = ‖x[b] − weight[o]‖_p``. Three backends share one contract
(see ``certify.linf_dist.eager``): Triton kernels for CUDA tensors, a torch.compile'd fused
reduction for CPU tensors, and the chunked eager code wherever those are unavailable. None of them
builds the B×CO×CI tensor in full. The backward uses the saved output (finite p) or the saved first
argmax (p = ∞), as the reference kernels do.
"""

from __future__ import annotations

import importlib
import math
import os
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

BACKENDS = ("auto", "eager", "compiled", "triton")
_BACKEND_ENV = "CERTIFY_LP_DIST_BACKEND"  # force one backend (benchmarks, debugging)


def lp_dist(x: Tensor, weight: Tensor, p: float, *, backend: str | None = None) -> Tensor:
    """ℓp distances between the rows of x (B, CI) and of weight (CO, CI): a (B, CO) tensor.

    ``p`` is a float ≥ 1 or ``float('inf')``; differentiable in both ``x`` and ``weight``.
    ``backend`` (default: $CERTIFY_LP_DIST_BACKEND or "auto") picks the implementation.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"lp_dist needs x (B, CI) and weight (CO, CI), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if x.device != weight.device or x.dtype != weight.dtype:
        raise ValueError(f"x and weight must share device and dtype, got {x.device}/{x.dtype} and "
                         f"{weight.device}/{weight.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"lp_dist computes in float32 or float64, got {x.dtype}")
    p = float(p)
    if not p >= 1.0:
        raise ValueError(f"p must be at least 1 (or inf), got {p}")
    module = _backend(backend or os.environ.get(_BACKEND_ENV, "auto"), x)
    return _LpDist.apply(x.contiguous(), weight.contiguous(), p, module)


def _backend(name: str, x: Tensor) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"unknown lp_dist backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "triton" if x.is_cuda else "compiled"
    if name in ("triton", "compiled"):
        try:
            fast = importlib.import_module(
                f"certify.linf_dist.{'triton_kernels' if name == 'triton' else 'cpu_kernels'}")
        except ImportError:  # e.g. triton missing: the eager path computes the same values
            fast = None
        if fast is not None and fast.available(x):
            return fast
    from certify.linf_dist import eager

    return eager


class _LpDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, p: float, backend: ModuleType) -> Tensor:
        ctx.p, ctx.backend = p, backend
        if math.isinf(p):
            y, index = backend.forward_inf(x, weight, ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
            ctx.save_for_backward(index)
            ctx.shapes = (x.shape, weight.shape)
        else:
            y = backend.forward(x, weight, p)
            ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        grad_y = grad_y.contiguous()
        if math.isinf(ctx.p):
            (index,) = ctx.saved_tensors
            own = getattr(ctx.backend, "backward_inf", None)  # a backend's faster scatter, if any
            grads = own(index, grad_y, *ctx.shapes) if own is not None else None
            grad_x, grad_w = grads if grads is not None else _scatter_inf_grads(index, grad_y, *ctx.shapes)
        else:
            x, weight, y = ctx.saved_tensors
            grad_x, grad_w = ctx.backend.backward(x, weight, y, grad_y, ctx.p)
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_w if ctx.needs_input_grad[1] else None, None, None)


def _scatter_inf_grads(index: Tensor, grad_y: Tensor, x_shape: torch.Size,
                       w_shape: torch.Size) -> tuple[Tensor, Tensor]:
    """p = ∞: each output's gradient goes to its first maximal coordinate i, with the sign of
    x_i − w_i, which the backends fold into the index (``i`` if ≥ 0, ``−(i + 1)`` if < 0)."""
    negative = index < 0
    coordinate = torch.where(negative, -index - 1, index)
    signed = torch.where(negative, -grad_y, grad_y)
    grad_x = grad_y.new_zeros(x_shape).scatter_add_(1, coordinate, signed)
    grad_w = grad_y.new_zeros(w_shape).scatter_add_(1, coordinate.t(), -signed.t())
    return grad_x, grad_w
