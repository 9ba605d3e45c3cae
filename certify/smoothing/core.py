"""Randomized smoothing of a base classifier with Gaussian noise (Cohen, Rosenfeld & Kolter 2019).

Same statistics and the same public methods as the reference ``Smooth``: switch by changing one import.
What differs is how the votes are counted: noise is drawn into a reused buffer, votes are tallied on
the device with ``bincount``, and the host waits once per ``certify``/``predict`` call instead of once
per batch.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
from torch import nn

from certify.smoothing.bounds import gaussian_radius, lower_confidence_bound, top_two_test_pvalue

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ²I)."""

    ABSTAIN = -1

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float,
                 precision: str = "fp32", static_batch: bool = False):
        """``precision`` sets the dtype of the base classifier's forward (autocast); the noise is
        always drawn and added in fp32, so a lower precision is just another deterministic f.
        ``static_batch``: every forward gets a full ``batch_size`` rows, so that a compiled
        classifier meets one shape only; rows beyond the samples asked for are left over from
        earlier batches (or zeros), their votes dropped, and the noise drawn is the same as without."""
        check_smoothing(num_classes, sigma, precision)
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.precision = precision
        self.static_batch = static_batch
        self._buffer: torch.Tensor | None = None

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> tuple[int, float]:
        """Predict with g at x and certify an ℓ2 radius around it.

        The class is chosen from n0 samples; n fresh samples then bound its probability from below with
        confidence 1 − α. With probability ≥ 1 − α over the noise, the answer is either ``ABSTAIN`` or
        g(x) with a radius within which g is constant.

        :param x: one input (C, H, W) in pixel space, on the classifier's device
        :return: (class, radius), or (Smooth.ABSTAIN, 0.0)
        """
        n0, n, batch_size = check_counts(n0=n0, n=n, batch_size=batch_size)
        check_alpha(alpha)
        self.base_classifier.eval()
        selection = self._count_votes(x, n0, batch_size, generator)
        estimation = self._count_votes(x, n, batch_size, generator)
        c_hat = selection.argmax()  # the first class on ties, as numpy's argmax in the reference
        c_hat, n_a = torch.stack([c_hat, estimation[c_hat]]).tolist()  # the one host sync
        p_lower = lower_confidence_bound(n_a, n, alpha)
        if p_lower < 0.5:
            return Smooth.ABSTAIN, 0.0
        return c_hat, gaussian_radius(p_lower, self.sigma)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
                generator: torch.Generator | None = None) -> int:
        """Predict g(x), abstaining unless the top class beats the runner-up at level α.

        With probability ≥ 1 − α the answer is ``ABSTAIN`` or g(x).
        """
        check_alpha(alpha)
        top_1, count_1, count_2 = self.top_two_votes(x, n, batch_size, generator)
        if top_two_test_pvalue(count_1, count_2) > alpha:
            return Smooth.ABSTAIN
        return top_1

    def top_two_votes(self, x: torch.Tensor, n: int, batch_size: int,
                      generator: torch.Generator | None = None) -> tuple[int, int, int]:
        """The most voted class among n noisy copies of x, its votes and the runner-up's votes:
        what ``predict``'s test needs (and what a caller reports as its p-value)."""
        n, batch_size = check_counts(n=n, batch_size=batch_size)
        self.base_classifier.eval()
        counts = self._count_votes(x, n, batch_size, generator)
        (count_1, count_2), (top_1, _) = (t.tolist() for t in counts.topk(2))
        return top_1, count_1, count_2

    def _count_votes(self, x: torch.Tensor, num: int, batch_size: int,
                     generator: torch.Generator | None) -> torch.Tensor:
        """Hard votes of f on ``num`` noisy copies of x, as an int64 tensor of class counts on x's device."""
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        rows = batch_size if self.static_batch else min(batch_size, num)
        buffer = self._noise_buffer(x, rows)
        autocast = autocast_context(x.device, PRECISIONS[self.precision])
        with torch.inference_mode(), autocast:
            for start in range(0, num, batch_size):
                take = min(batch_size, num - start)
                noisy = buffer[:take]  # noise for the samples asked for only: the same draws either way
                noisy.normal_(0.0, self.sigma, generator=generator)
                noisy.add_(x)  # x + ε in fp32, not clamped to [0, 1] (as the reference)
                votes = self.base_classifier(buffer[:rows] if self.static_batch else noisy).argmax(1)[:take]
                counts += torch.bincount(votes, minlength=self.num_classes)
        return counts

    def _noise_buffer(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """A reused fp32 (rows, *x.shape) buffer: no allocation per batch or per example."""
        buf = self._buffer
        if (buf is None or buf.shape[1:] != x.shape or buf.shape[0] < rows
                or buf.device != x.device):
            with torch.inference_mode():  # zeros: with static_batch, unfilled rows go through f
                buf = torch.zeros((rows, *x.shape), dtype=torch.float32, device=x.device)
            self._buffer = buf
        return buf


def autocast_context(device: torch.device,
                     dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on the device's type, or nothing for fp32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_smoothing(num_classes: int, sigma: float, precision: str) -> None:
    """The arguments every smoothed classifier takes, or ValueError naming the bad one."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")


def check_counts(**counts: int) -> list[int]:
    """The counts as Python ints (numpy integers accepted), or ValueError naming the first bad one."""
    checked: list[int] = []
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        checked.append(int(value))
    return checked


def check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0) or math.isnan(alpha):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
