"""Which training images each epoch draws: a plain permutation, or draws with replacement by
per-example weight (docs/long_tail_noisy.md#class-weights, #cdb-w-and-cdb-s).

- ``class-balanced``: LDAM-DRW's "Resample" rule, an image's weight the *unnormalized*
  class-balanced weight (1 − β)/(1 − β^n_y) of its class, β = 0.9999.
- ``cdb``: CDB-S, classes drawn ∝ d_c^τ with d_c = 1 − accuracy on the balanced validation split,
  refreshed after every epoch (d starts at 1: uniform over classes), so an image's weight is
  d_y^τ / n_y. The IJCV paper describes it; the official repository has no code for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from certify.losses.long_tail import CB_BETA, TAU_RULES, cdb_tau, class_balanced_weights
from certify.objectives.reweighting import class_difficulty
from certify.params import Param, ParamError
from certify.training.component import TrainingComponent, TrainingRun
from certify.training.views import training_targets

__all__ = ["ExampleSampling", "class_balanced_example_weights", "cdb_example_weights"]



def class_balanced_example_weights(targets: Tensor, counts: Tensor, beta: float = CB_BETA) -> Tensor:
    """∝ (1 − β)/(1 − β^n_{y_i}) per image: rarer classes are drawn more often (a sampler needs the
    weights only up to a constant, so the loss's normalized class weights serve)."""
    return class_balanced_weights(counts, beta).double()[targets]


def cdb_example_weights(targets: Tensor, counts: Tensor, difficulty: Tensor,
                        tau: str | float = "dynamic", floor: float = 0.0) -> Tensor:
    """d_{y_i}^τ / n_{y_i} per image, so that class c is drawn with probability ∝ d_c^τ; ``floor``
    on d keeps a class that was perfect on validation in the draw (0: as the paper)."""
    d = difficulty.to(torch.float64)
    per_class = d.clamp(min=floor).pow(cdb_tau(d, tau)) / counts.to(torch.float64).clamp(min=1)
    if not per_class[counts > 0].sum() > 0:  # every class perfect on validation: draw uniformly
        per_class = 1.0 / counts.to(torch.float64).clamp(min=1)
    return per_class[targets]


SAMPLER_TAU = Param("sampler_tau", "dynamic", "CDB-S: exponent τ (a number, dynamic or dynamic-imagenet).",
                    kind="float|str", choices=TAU_RULES, metavar="TAU|dynamic", reference="Sinha et al. 2022")
SAMPLER_OPTIONS: tuple[Param, ...] = (
    Param("sampler", "none", "Draw each epoch's images with replacement: class-balanced (LDAM's "
          "Resample) or cdb (CDB-S, classes ∝ validation difficulty^τ; needs --balanced-val).",
          kind=str, choices=("none", "class-balanced", "cdb")),
    SAMPLER_TAU,
    Param("sampler_floor", 0.0, "CDB-S: floor on the difficulty, so a class perfect on validation "
          "is still drawn (0: the paper's rule).", at_least=0, at_most=1),
)


class ExampleSampling(TrainingComponent):
    """The sampling rule; ``example_weights()`` is None for a plain shuffled epoch."""

    name = "sampling"
    title = "Sampling (long-tailed data)"
    options = SAMPLER_OPTIONS

    def __init__(self, settings: Any):
        self.rule = settings.sampler
        self.tau: str | float = SAMPLER_TAU.check(settings.sampler_tau)  # "0.5" -> 0.5
        self.floor = float(settings.sampler_floor)
        self.targets: Tensor | None = None
        self.counts = torch.zeros(0)
        self.difficulty = torch.zeros(0)

    def setup(self, run: TrainingRun) -> None:
        if self.rule != "none" and run.distributed:
            raise ParamError("sampler", "is not supported under torchrun yet (each process would "
                                        "keep its own draws)")
        if self.rule == "cdb" and run.data.validation is None:
            raise ParamError("balanced_val", "sampler cdb samples by validation difficulty: set "
                                             "balanced_val to N")
        self.targets = training_targets(run.data) if self.rule != "none" else None
        self.counts = torch.as_tensor(run.data.class_counts)
        self.difficulty = torch.ones(run.num_classes)

    def example_weights(self) -> Tensor | None:
        if self.rule == "class-balanced":
            assert self.targets is not None  # setup set them for this rule
            return class_balanced_example_weights(self.targets, self.counts)
        if self.rule == "cdb":
            assert self.targets is not None  # setup set them for this rule
            return cdb_example_weights(self.targets, self.counts, self.difficulty, self.tau, self.floor)
        return None

    def end_epoch(self, run: TrainingRun, epoch: int) -> None:
        if self.rule == "cdb":
            self.difficulty = class_difficulty(run.model, run.data.validation, run.num_classes,
                                               run.device)

    def metrics(self) -> dict[str, Any]:
        """CDB-S's difficulty, which steers the next epoch's draws."""
        if self.rule != "cdb":
            return {}
        return {"sampler_difficulty": [round(d, 4) for d in self.difficulty.tolist()]}

    def state_dict(self) -> dict[str, Any]:
        return {"difficulty": self.difficulty.tolist()} if self.rule == "cdb" else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "difficulty" in state:
            self.difficulty = torch.tensor(state["difficulty"])
