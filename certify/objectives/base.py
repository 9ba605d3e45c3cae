"""What a training objective is: a training component that also turns a batch into a loss.

An objective declares its typed ``options`` (the CLI flags, recipe keys and checks are generated
from them), the certificate its model is trained for, and any hooks it needs; the loop
(:mod:`certify.training.loop`) calls them and knows no objective by name.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from certify.params import ParamError
from certify.training.component import TrainingComponent


class Objective(TrainingComponent):
    """Base class of the registry's objectives.

    ``steps_per_batch``: the loop splits each loader batch into this many equal chunks and takes one
    optimizer step per chunk (SmoothMix's reference takes m steps per batch; most objectives: 1).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for 'certify train --help'
    steps_per_batch: int = 1
    always_recorded: ClassVar[tuple[str, ...]] = ()  # options the checkpoint records at their default
    required: ClassVar[tuple[str, ...]] = ()  # options without a default that must be given

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The batch's loss and statistics to average over the epoch (``correct``: a count)."""
        raise NotImplementedError

    def certification(self) -> dict[str, Any]:
        """The certificate the model is trained for, recorded in the checkpoint for 'certify run'."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The settings as given, so that ``make_objective(name, **params())`` rebuilds it."""
        raise NotImplementedError

    def arch_overrides(self) -> dict[str, Any]:
        """Architecture options this objective needs unless the user chose otherwise."""
        return {}

    def schedule(self, model: nn.Module, step: int, steps_per_epoch: int) -> dict[str, float]:
        """Before every loader batch (global step from 0): set per-step schedules on the model and
        return the values to show (the ℓ∞ nets' p and ε, ...)."""
        return {}

    def reweight_examples(self, weighting: Any) -> None:
        """Reduce the per-example losses with ``weighting`` (ABSGD) instead of their mean."""
        raise ParamError("optimizer", f"absgd re-weights per-example losses: use objective "
                                      f"classify, gaussian or smoothmix, not {self.name}")
