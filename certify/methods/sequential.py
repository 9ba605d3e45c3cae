"""``sequential``: randomized smoothing that stops sampling each image once more cannot help.

The class is selected as in ``cohen``; the estimation samples then come in doubling rounds up to
``n``, with a lower bound valid at level α whatever the round it stops at (``StoppingRule``). Images
share forward batches, so small rounds keep the device busy. Rows add a ``samples`` column: the
estimation samples that image took.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from certify.methods.base import CertificationMethod, MethodOption, Row, example_generator
from certify.methods.cohen import SMOOTHING_OPTIONS, base_classifier, check_certifiable
from certify.smoothing.sequential import SequentialSmooth


class Sequential(CertificationMethod):
    name = "sequential"
    summary = ("doubling rounds up to --n, each image stopped once --radii are decided: the "
               "same guarantee for far fewer samples")
    kinds = ("smoothing",)
    norm = "l2"
    options = (
        *SMOOTHING_OPTIONS,
        MethodOption("radii", None,
                     "Radii whose certified accuracy matters, e.g. 0.25,0.5,0.75: an image stops once "
                     "certified at the largest, or once the next is out of reach. Default: the "
                     "summary table's multiples of 0.25 up to the largest radius N samples can "
                     "certify.", kind="floats"),
        MethodOption("futility", 0.1,
                     "Level of the test that gives up on the next radius. The bound is valid at any "
                     "stop, so this trades samples for certified accuracy, not validity.",
                     above=0, below=1),
        MethodOption("first_round", 512,
                     "Estimation samples of the first round; each later round doubles the total.",
                     kind=int, at_least=1),
    )
    resume_keys = ("sigma", "n0", "n", "alpha", "precision", "radii", "futility", "first_round",
                   "rounds", "levels", "futility_target")
    columns = ("samples",)
    # noise is drawn per image in fixed chunks, whatever the batch; on a GPU the model's outputs may
    # still depend on the batch's shape in the last bits, so there resume and merge keep --batch
    rows_ignore = ("batch",)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        check_certifiable(self.settings["n"], 0.75 * self.settings["alpha"])  # the last round's level
        s = self.settings
        self.sigma = float(self.ckpt.certification["sigma"])
        self.smooth = SequentialSmooth(base_classifier(self.model, s), self.ckpt.num_classes,
                                       self.sigma, radii=s["radii"], futility=s["futility"],
                                       first_round=s["first_round"], precision=s["precision"],
                                       static_batch=s["compile"] != "off")
        self.rule = self.smooth.rule(s["n"], s["alpha"])

    def certify_stream(self, examples: Iterable[tuple[int, torch.Tensor]]) -> Iterator[Row]:
        s, ctx = self.settings, self.context
        pairs = ((x.to(ctx.device), example_generator(ctx, idx)) for idx, x in examples)
        for result in self.smooth.certify_stream(pairs, s["n0"], s["n"], s["alpha"], ctx.batch_size):
            yield Row(result.prediction, result.radius, result.seconds, {"samples": result.samples})

    def must_match(self) -> tuple[str, ...]:
        return self.resume_keys + (() if self.context.device.type == "cpu" else ("batch",))

    def describe(self) -> dict[str, Any]:
        rule = self.rule
        return {**super().describe(), "radii": list(rule.radii), "sigma": self.sigma,
                "rounds": list(rule.sizes), "levels": [float(f"{a:.6g}") for a in rule.levels],
                "futility_target": rule.futility_target, "batch": self.context.batch_size,
                "seed": self.context.seed}

    def totals(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        samples = columns["samples"]
        return {"estimation_samples": int(samples.sum()),
                "selection_samples": int(len(samples) * self.settings["n0"])}

