"""Randomized-smoothing certifier for ``certify run``: ``Smooth.certify`` with per-example seeds."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from certify.certifiers import CertifyOptions, example_seed
from certify.smoothing.core import Smooth


class SmoothingCertifier:
    """Certified ℓ2 radius by Monte Carlo (N0 selection + N estimation samples, Clopper-Pearson at α)."""

    norm = "l2"

    def __init__(self, model: nn.Module, num_classes: int, sigma: float, options: CertifyOptions):
        self.options = options
        self.smooth = Smooth(model, num_classes, sigma, precision=options.precision)

    def certify(self, x: torch.Tensor, idx: int) -> tuple[int, float]:
        opts = self.options
        generator = torch.Generator(device=opts.device).manual_seed(example_seed(opts.seed, idx))
        return self.smooth.certify(x.to(opts.device), opts.n0, opts.n, opts.alpha, opts.batch_size,
                                   generator=generator)

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"certifier": "smoothing", "norm": self.norm, "sigma": self.smooth.sigma, "n0": o.n0,
                "n": o.n, "alpha": o.alpha, "batch": o.batch_size, "precision": o.precision,
                "seed": o.seed}
