"""``cohen``: randomized smoothing certified as Cohen, Rosenfeld & Kolter (2019) do it.

N0 samples select the class, N fresh samples bound its probability (one-sided Clopper-Pearson at α),
radius σ·Φ⁻¹(bound). The default for smoothing checkpoints; its rows are those of the reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from certify.methods.base import (
    CertificationMethod,
    EpochCheck,
    MethodOption,
    OptionError,
    Row,
    example_generator,
)
from certify.smoothing.core import PRECISIONS, Smooth
from certify.smoothing.inference import COMPILE_MODES, fast_classifier

# The options every smoothing method shares, written once.
N0 = MethodOption("n0", 100, "Noise samples that select the class.", kind=int, at_least=1)
N = MethodOption("n", 100_000,
                 "Noise samples that estimate the class's probability (sequential: at most this "
                 "many; predict: the votes its test counts). The largest certifiable radius is "
                 "σ·Φ⁻¹(α^(1/N)): 3.81σ at 100000, 3.20σ at 10000, 2.46σ at 1000 (sequential, "
                 "whose last round has 3/4 of α: 3.80σ, 3.19σ, 2.45σ).", kind=int, at_least=1)
ALPHA = MethodOption("alpha", 0.001, "Failure probability of each certificate.", above=0, below=1)
PRECISION = MethodOption("precision", "fp32",
                         "dtype of the base classifier's forward; noise is always fp32.", kind=str,
                         choices=tuple(PRECISIONS))
CHANNELS_LAST = MethodOption("channels_last", False,
                             "Run the classifier in channels_last memory format: faster "
                             "convolutions on a GPU, above all with --precision bf16 "
                             "(cifar_resnet110 on an H200: 1.76× the reference loop, 1.28× without "
                             "it). Outputs change in the last bits only.", kind=bool)
COMPILE = MethodOption("compile", "off",
                       "torch.compile the classifier; reduce-overhead adds CUDA graphs (with bf16 "
                       "on an H200: 2.6× the reference loop). Every forward then takes a full "
                       "--batch, and the first ones compile (about 45 s for cifar_resnet110), which "
                       "pays off over many images.", kind=str, choices=COMPILE_MODES)
SMOOTHING_OPTIONS = (N0, N, ALPHA, PRECISION, CHANNELS_LAST, COMPILE)


def base_classifier(model: nn.Module, settings: Mapping[str, Any]) -> nn.Module:
    """The model as the smoothing methods run it: as loaded, or faster (--channels-last, --compile)."""
    return fast_classifier(model, channels_last=settings["channels_last"], compile_mode=settings["compile"])


def check_certifiable(n: int, alpha: float) -> None:
    """Refuse an N so small that no image can be certified at level α: even N votes out of N
    give a lower bound of α^(1/N) on p_A, which must exceed ½, so N must exceed log α / log ½."""
    if alpha ** (1.0 / n) <= 0.5:
        needed = math.floor(math.log(alpha) / math.log(0.5)) + 1
        raise OptionError("n", f"{n} samples certify no image at alpha {alpha:g}: even {n} votes of "
                               f"{n} bound p_A below α^(1/N) = {alpha ** (1.0 / n):.3f} ≤ ½; use at "
                               f"least {needed}")


class NoisyAccuracy(EpochCheck):
    """``test_noisy_acc``: the base classifier's accuracy under one noise draw per image, the
    training log's cheap stand-in for the smoothed classifier's accuracy."""

    def __init__(self, model: nn.Module, sigma: float, device: torch.device, seed: int):
        self.model, self.sigma = model, sigma
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.hits = self.total = 0

    def update(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        noise = torch.randn(x.shape, generator=self.generator, device=x.device) * self.sigma
        self.hits += int((self.model(x + noise).argmax(1) == y).sum().item())
        self.total += len(y)

    def result(self) -> dict[str, float]:
        return {"test_noisy_acc": round(self.hits / self.total, 5)}


class Cohen(CertificationMethod):
    name = "cohen"
    summary = "--n samples for every image, as Cohen et al. (2019); the reference's rows"
    kinds = ("smoothing",)
    norm = "l2"
    options: ClassVar[tuple[MethodOption, ...]] = SMOOTHING_OPTIONS
    resume_keys: ClassVar[tuple[str, ...]] = ("sigma", "n0", "n", "alpha", "precision")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.check_counts()
        self.sigma = float(self.ckpt.certification["sigma"])
        self.smooth = Smooth(base_classifier(self.model, self.settings), self.ckpt.num_classes,
                             self.sigma, precision=self.settings["precision"],
                             static_batch=self.settings["compile"] != "off")

    def check_counts(self) -> None:
        """Refuse, before any work, an N with which no image could get a result."""
        check_certifiable(self.settings["n"], self.settings["alpha"])

    @classmethod
    def epoch_check(cls, model: nn.Module, certification: Mapping[str, Any], device: torch.device,
                    seed: int) -> EpochCheck | None:
        return NoisyAccuracy(model, float(certification["sigma"]), device, seed)

    def must_match(self) -> tuple[str, ...]:
        """A resumed run must keep --batch where the noise stream depends on it: on a GPU, and on
        the CPU for inputs whose size is not a multiple of 16 (there torch fills a tensor of that
        many values in 16-value blocks, so the stream is the same however it is batched)."""
        values = math.prod(self.ckpt.input_shape)
        batch_free = self.context.device.type == "cpu" and values % 16 == 0
        return self.resume_keys + (() if batch_free else ("batch",))

    def certify_stream(self, examples: Iterable[tuple[int, torch.Tensor]]) -> Iterator[Row]:
        s, ctx = self.settings, self.context
        for idx, x in examples:
            start = time.perf_counter()
            prediction, radius = self.smooth.certify(x.to(ctx.device), s["n0"], s["n"], s["alpha"],
                                                     ctx.batch_size, example_generator(ctx, idx))
            yield Row(prediction, radius, time.perf_counter() - start)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sigma": self.sigma, "batch": self.context.batch_size,
                "seed": self.context.seed}
