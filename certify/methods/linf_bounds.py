"""``linf-bounds``: the deterministic ℓ∞ certificate of an ℓ∞-distance net, batched, no sampling.

``interval`` (the default, as the references evaluate): interval bounds over the clipped pixel box,
the largest ε by a search over ε, never below the Lipschitz radius on the pure net; rows come out
every ``INTERVAL_CHUNK`` images. ``lipschitz``: σ·margin/2 from one forward pass (pure nets; fast).
``auto`` is the old default's name and now means ``interval``.
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

# Images per step of the interval search: rows (and the progress bar) advance this often, and an
# image leaves the search as soon as its radius is settled.
INTERVAL_CHUNK = 64


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
        MethodOption("bound", "interval",
                     "'interval': interval bounds over the clipped pixel box, the largest certified "
                     "ε (the references' certificate; on the pure net never below the Lipschitz "
                     "radius); 'lipschitz': σ·margin/2 from one forward pass (pure net only, fast); "
                     "'auto': the same as interval.", kind=str, choices=BOUNDS,
                     reference="Zhang et al. 2021, 2022 (certified_test)"),
    )
    resume_keys = ("bound", "batch")  # the sidecar records the resolved bound (auto → interval)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model.eval()
        set_p(self.model, INF)  # a certificate holds only for the p = ∞ network
        self.pure = hasattr(split_model(self.model)[1], "logit_bounds")
        bound = self.settings["bound"]
        self.bound = "interval" if bound == "auto" else bound  # auto: before, lipschitz on the pure net
        if not self.pure and self.bound == "lipschitz":
            raise OptionError("bound", "the hybrid ℓ∞-dist net has an MLP head with no Lipschitz "
                                       "certificate: use interval")
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
        return [row for rows in self._certify_chunks(x) for row in rows]

    @torch.no_grad()
    def _certify_chunks(self, x: torch.Tensor) -> Iterator[list[tuple[int, float]]]:
        """(prediction, radius) pairs of the batch: all at once for the Lipschitz bound (one forward
        pass), then ``INTERVAL_CHUNK`` images at a time for the interval bound."""
        x = x.to(self.context.device)
        logits = self.model(x)
        predictions = logits.argmax(1)
        lipschitz = lipschitz_radii(self.model, logits).clamp_min(0.0) if self.pure else None
        if self.bound == "lipschitz":
            assert lipschitz is not None  # refused for the hybrid net in __init__
            yield list(zip(predictions.tolist(), lipschitz.tolist(), strict=True))
            return
        for start in range(0, len(x), INTERVAL_CHUNK):
            part = slice(start, start + INTERVAL_CHUNK)
            radii = interval_radii(self.model, x[part], predictions[part],
                                   floor=None if lipschitz is None else lipschitz[part])
            if lipschitz is not None:  # the larger of two certificates (the search starts there)
                radii = torch.maximum(radii, lipschitz[part])
            yield list(zip(predictions[part].tolist(), radii.clamp_min(0.0).tolist(), strict=True))

    def certify_stream(self, examples: Iterable[tuple[int, torch.Tensor]]) -> Iterator[Row]:
        examples = iter(examples)
        while batch := list(islice(examples, self.context.batch_size)):
            start = time.perf_counter()
            for rows in self._certify_chunks(torch.stack([x for _, x in batch])):
                # the chunk's time (the first one's includes the batch's forward pass), shared evenly
                seconds = (time.perf_counter() - start) / len(rows)
                for prediction, radius in rows:
                    yield Row(prediction, radius, seconds)
                start = time.perf_counter()  # not counting the time the rows took to be written

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "certifier": "linf_dist", "bound": self.bound,
                "batch": self.context.batch_size, "input_std": self.std}

