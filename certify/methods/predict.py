"""``predict``: the smoothed classifier's prediction with abstention, as the reference's ``predict.py``.

N samples, then the two-sided binomial test of the top class against the runner-up (Hung & Fithian
2016): with probability ≥ 1 − α the answer is g(x) or an abstention. No radius is certified, so each
row's radius is 0 (a prediction certified at radius 0 is exactly what the test guarantees) and the
certified accuracy at 0 is the reference's accuracy of ``predict``. Rows add the test's ``pvalue``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import torch

from certify.methods.base import OptionError, Row, example_generator
from certify.methods.cohen import ALPHA, CHANNELS_LAST, COMPILE, PRECISION, Cohen, N
from certify.smoothing.bounds import top_two_test_pvalue
from certify.smoothing.core import Smooth


def check_decidable(n: int, alpha: float) -> None:
    """Refuse an N so small that the test always abstains: n votes of n give p = 2·½ⁿ, which must
    not exceed α."""
    if 2 * 0.5 ** n > alpha:
        needed = math.ceil(math.log2(2 / alpha))
        raise OptionError("n", f"{n} samples predict no image at alpha {alpha:g}: even {n} votes of "
                               f"{n} give p-value 2·½^{n} = {2 * 0.5 ** n:.3g} > α; use at least {needed}")


class Predict(Cohen):
    """Cohen's smoothed classifier, noise stream and sidecar; the test and the rows differ."""

    name = "predict"
    summary = ("g(x) or abstain from --n votes (Hung & Fithian's test), as the reference's "
               "predict.py; radius 0")
    options = (N, ALPHA, PRECISION, CHANNELS_LAST, COMPILE)  # N: the reference's default; its README uses 1000
    resume_keys = ("sigma", "n", "alpha", "precision")
    columns = ("pvalue",)

    def check_counts(self) -> None:
        check_decidable(self.settings["n"], self.settings["alpha"])

    def certify_stream(self, examples: Iterable[tuple[int, torch.Tensor]]) -> Iterator[Row]:
        s, ctx = self.settings, self.context
        for idx, x in examples:
            start = time.perf_counter()
            top, count_1, count_2 = self.smooth.top_two_votes(x.to(ctx.device), s["n"], ctx.batch_size,
                                                              example_generator(ctx, idx))
            pvalue = top_two_test_pvalue(count_1, count_2)
            prediction = Smooth.ABSTAIN if pvalue > s["alpha"] else top
            yield Row(prediction, 0.0, time.perf_counter() - start, {"pvalue": f"{pvalue:.4g}"})
