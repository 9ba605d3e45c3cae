"""ABSGD as a training component: with ``optimizer = absgd`` it hands the objective an
attention-weighted reduction of its per-example losses (the math: :mod:`certify.losses.absgd`)."""

from __future__ import annotations

import math
from typing import Any

from certify.losses.absgd import ABSGDWeighting
from certify.params import Param, ParamError
from certify.training.component import TrainingComponent, TrainingRun

ABSGD_OPTIONS: tuple[Param, ...] = (
    Param("absgd_lambda", 1.0, "ABSGD: λ from --absgd-lambda-epoch on; > 0 up-weights hard "
          "examples (imbalance), < 0 down-weights them (noisy labels).", reference="Qi et al. 2023"),
    Param("absgd_init_lambda", 10.0, "ABSGD: λ before --absgd-lambda-epoch (≥ 200: plain SGD, the "
          "two-stage schedule)."),
    Param("absgd_lambda_epoch", 160, "ABSGD: epoch (0-based) at which λ switches.", kind=int,
          at_least=0),
    Param("absgd_gamma", 0.1, "ABSGD: moving-average rate γ of the normalizer.", above=0,
          at_most=1),
    Param("absgd_alpha", 0.5, "ABSGD: α scaling the normalizer.", above=0),
)


class ABSGD(TrainingComponent):
    """Attaches ABSGD's weighting to the objective when the optimizer is ``absgd``; the objective
    keeps its state (the running normalizer) with its own."""

    name = "absgd"
    title = "ABSGD (with --optimizer absgd)"
    options = ABSGD_OPTIONS

    def __init__(self, settings: Any):
        self.settings = settings

    def setup(self, run: TrainingRun) -> None:
        if run.config.optim.optimizer != "absgd":
            return
        if run.distributed:
            raise ParamError("optimizer", "absgd is not supported under torchrun yet (each process "
                                          "would keep its own normalizer)")
        s = self.settings
        for name in ("absgd_lambda", "absgd_init_lambda"):
            if getattr(s, name) == 0 or not math.isfinite(getattr(s, name)):
                raise ParamError(name, f"must be a non-zero number, got {getattr(s, name)}")
        run.objective.reweight_examples(ABSGDWeighting(
            s.absgd_lambda, s.absgd_init_lambda, s.absgd_lambda_epoch, s.absgd_gamma, s.absgd_alpha))
