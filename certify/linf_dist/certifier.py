"""Deterministic ℓ∞ certificates of ℓ∞-distance nets, in pixel units (``certify run`` uses them
through the ``linf-bounds`` method, ``certify/methods/linf_bounds.py``).

Two certificates (``bound``):

- ``interval`` (the default, the references' certificate): interval bounds over the pixel box
  ``[x − ε, x + ε] ∩ [0, 1]`` (exact per ℓ∞-dist neuron, then through the MLP head for the hybrid
  net, docs/linf_dist.md#interval-bounds); the radius is the largest ε the bounds certify, found by
  a search over ε (:func:`interval_radii`). Boxes grow with ε and interval bounds are monotone in
  the box, so every ε below the returned value is certified too. For the pure net the search
  starts from the Lipschitz radius, so it is never below it.
- ``lipschitz``: the pure net is 1-Lipschitz per logit w.r.t. ℓ∞ in normalized units, so with the
  model's scalar input std σ the prediction cannot change on the pixel ball of radius σ·margin/2.
  One forward pass per batch (docs/linf_dist.md#lipschitz-margin); the fast option.
"""

from __future__ import annotations

import contextlib
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from certify.linf_dist.layers import INF
from certify.nets.normalize import NormalizeLayer

BOUNDS = ("interval", "lipschitz", "auto")  # auto: the old default's name, now the same as interval


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
def interval_radii(model: nn.Module, x: Tensor, y: Tensor, iterations: int = 16,
                   floor: Tensor | None = None) -> Tensor:
    """The largest ε in [0, 1] at which interval bounds certify class y, to within 2^-iterations
    below; never below ``floor`` (a radius already certified, e.g. the Lipschitz one), where the
    search starts.

    All images of the batch search together, and an image leaves the batch once its bracket
    [lo, hi] (every ε < lo certified, hi not) is narrower than 2^-iterations. Each step evaluates
    the bounds at the midpoint t and moves lo (certified) or hi (not) there. For the pure net the
    margin lower bound m(ε) is 2/σ-Lipschitz in ε (a box growing by δ moves every layer's bounds by
    at most δ/σ, docs/linf_dist.md#interval-bounds), so a step also gives lo = t + σ·m(t)/2 when
    m(t) > 0 and hi = t + σ·m(t)/2 when m(t) ≤ 0: usually a few steps instead of 16. The first
    step probes just above lo, which settles most images when the interval radius equals the
    Lipschitz one. At most 1 + ``iterations`` steps, then one at ε = 1 for the images whose hi
    never moved (certified on all of [0, 1]^d: radius 1).
    """
    with _one_cpu_thread(x):
        return _interval_search(model, x, y, iterations, floor)


def _interval_search(model: nn.Module, x: Tensor, y: Tensor, iterations: int,
                     floor: Tensor | None) -> Tensor:
    tol = 2.0 ** -iterations
    lo = torch.zeros(len(x), device=x.device) if floor is None else floor.float().clamp(0.0, 1.0)
    hi = torch.ones_like(lo)
    slope = 2.0 / input_std(model) if _is_pure(model) else None  # bound on |dm/dε|: pure net only
    active = torch.nonzero(hi - lo > tol).flatten()
    for step in range(iterations + 1):
        if len(active) == 0:
            break
        a_lo, a_hi = lo[active], hi[active]
        t = (a_lo + tol).clamp_max(1.0) if step == 0 else (a_lo + a_hi) / 2
        m = _min_margin(model, x[active], t, y[active])
        moved = t if slope is None else t + m / slope  # ≥ t where certified, ≤ t where not
        certified = m > 0
        # lo never decreases and hi never passes below it (rounding errors aside, moved is
        # already within [lo, hi]; it exceeds 1 where ε = 1 is certified)
        a_lo, a_hi = (torch.where(certified, torch.minimum(moved, a_hi), a_lo),
                      torch.where(certified, a_hi, torch.maximum(moved, a_lo)))
        lo[active], hi[active] = a_lo, a_hi
        active = active[a_hi - a_lo > tol]
    whole = torch.nonzero((hi >= 1.0) & (lo < 1.0)).flatten()  # never refuted: is ε = 1 certified?
    if len(whole):
        one = torch.ones(len(whole), device=x.device)
        lo[whole] = torch.where(_min_margin(model, x[whole], one, y[whole]) > 0, one, lo[whole])
    return lo


def _one_cpu_thread(like: Tensor) -> contextlib.AbstractContextManager[None]:
    """One OpenMP thread for a search on CPU tensors. Its steps are many small operations (a
    chunk of images, cache-sized pieces of each layer): the interval certificates of
    results/fmnist-linf-short's 10,000 test images took 108 s on the 2-core machine's 2 threads and
    14 s on one, next to a training run. The pure net's bounds do not depend on the thread count
    (elementwise operations and maxima)."""
    from certify.linf_dist.cpu_kernels import one_thread

    return one_thread(like.device.type == "cpu")


def _is_pure(model: nn.Module) -> bool:
    """The pure ℓ∞-dist net (every logit 1-Lipschitz), not the hybrid net with its MLP head."""
    return hasattr(split_model(model)[1], "logit_bounds")


def _min_margin(model: nn.Module, x: Tensor, eps: Tensor, y: Tensor) -> Tensor:
    """min_{j≠y} of the margin lower bounds at ε: positive iff the box certifies class y."""
    margins = interval_margins(model, x, eps, y).scatter(1, y[:, None], INF)
    return margins.amin(1)
