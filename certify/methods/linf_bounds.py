"""``linf-bounds``: the deterministic ℓ∞ certificate of an ℓ∞-distance net, batched, no sampling.

``lipschitz``: σ·margin/2 from one forward pass (pure nets). ``interval``: interval bounds over the
clipped pixel box, the largest ε by bisection (the hybrid net's certificate). ``auto`` picks the
net's natural one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import torch
from torch import nn

from certify.linf_dist.certifier import BOUNDS, input_std, interval_radii, lipschitz_radii, split_model
from certify.linf_dist.layers import INF, get_p, set_p
from certify.methods.base import CertificationMethod, EpochCheck, MethodOption, OptionError, Row


class LipschitzAccuracy(EpochCheck):
    """``test_cert_acc``: the fraction of test images classified correctly with a Lipschitz radius
    of at least the recorded ε; logged only at p = ∞, where the certificate holds."""

    def __init__(self, model: nn.Module, eps: float):
        self.model, self.eps = model, eps
        self.hits = self.total = 0

    def update(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        certified = (logits.argmax(1) == y) & (lipschitz_radii(self.model, logits) >= self.eps)
        self.hits += int(certified.sum().item())
        self.total += len(y)

    def result(self) -> dict[str, float]:
        return {"test_cert_acc": round(self.hits / self.total, 5)}


class LinfBounds(CertificationMethod):
    name = "linf-bounds"
    summary = "deterministic ℓ∞ radius of an ℓ∞-dist net (--bound), --batch images at a time"
    kinds = ("linf_dist",)
    norm = "linf"
    options = (
        MethodOption("bound", "auto",
                     "'lipschitz' radius σ·margin/2 (pure net, one pass), 'interval' bounds over the "
                     "clipped pixel box (largest ε by bisection; the hybrid net's certificate), "
                     "'auto' the net's natural one.", kind=str, choices=BOUNDS),
    )
    resume_keys = ("bound", "batch")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model.eval()
        set_p(self.model, INF)  # a certificate holds only for the p = ∞ network
        hybrid = not hasattr(split_model(self.model)[1], "logit_bounds")
        bound = self.settings["bound"]
        self.bound = ("interval" if hybrid else "lipschitz") if bound == "auto" else bound
        if hybrid and self.bound == "lipschitz":
            raise OptionError("bound", "the hybrid ℓ∞-dist net has an MLP head with no Lipschitz "
                                       "certificate: use interval (or auto)")
        self.std = input_std(self.model)

    @classmethod
    def epoch_check(cls, model: nn.Module, certification: Mapping[str, Any], device: torch.device,
                    seed: int) -> EpochCheck | None:
        p = get_p(model)
        pure = hasattr(split_model(model)[1], "logit_bounds")
        eps = certification.get("eps")
        return LipschitzAccuracy(model, eps) if eps and pure and p is not None and math.isinf(p) \
            else None

    @torch.no_grad()
    def certify_batch(self, x: torch.Tensor) -> list[tuple[int, float]]:
        """(prediction, radius) for a batch of inputs."""
        x = x.to(self.context.device)
        logits = self.model(x)
        predictions = logits.argmax(1)
        if self.bound == "lipschitz":
            radii = lipschitz_radii(self.model, logits)
        else:
            radii = interval_radii(self.model, x, predictions)
        return list(zip(predictions.tolist(), radii.clamp_min(0.0).tolist(), strict=True))

    def certify_stream(self, examples: Iterable[tuple[int, torch.Tensor]]) -> Iterator[Row]:
        examples = iter(examples)
        while chunk := list(islice(examples, self.context.batch_size)):
            start = time.perf_counter()
            rows = self.certify_batch(torch.stack([x for _, x in chunk]))
            seconds = (time.perf_counter() - start) / len(chunk)  # a batch's time, shared evenly
            for prediction, radius in rows:
                yield Row(prediction, radius, seconds)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "certifier": "linf_dist", "bound": self.bound,
                "batch": self.context.batch_size, "input_std": self.std}

