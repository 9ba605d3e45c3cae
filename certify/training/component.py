"""What a training component is: the contract between one part of a run and the training loop.

The loop knows components only through these hooks, each a no-op by default, so it names no
method. A component (the sampler, ABSGD's example weighting, the susceptibility probe, and the
objective itself: :class:`certify.objectives.base.Objective`) declares its typed options and
overrides the hooks it needs. The loop calls, in this order:

- ``setup(run)`` once, after the model and the data exist and before the optimizer is built;
- per epoch: ``start_epoch(run, epoch)`` (returns metrics measured before training, e.g. ζ),
  ``example_weights()`` (None: a plain shuffled epoch), the training steps, then
  ``end_epoch(run, epoch)`` (e.g. a validation pass) and ``metrics()`` for the epoch's log line;
- ``state_dict()`` into every checkpoint, ``load_state_dict(state)`` when a run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from certify.params import Param


@dataclass
class TrainingRun:
    """What the hooks may look at: the run's settings, its bare model (no DDP wrapper), its data
    (a :class:`certify.training.views.TrainingData`) and test images, the objective, where it runs."""

    config: Any
    model: nn.Module
    data: Any
    test_set: Any
    objective: Any
    device: torch.device
    num_classes: int
    distributed: bool = False
    optimizer: Any = None  # set once built, after every component's setup
    history: list[dict[str, Any]] = field(default_factory=list)  # the log lines of past epochs


class TrainingComponent:
    """Base class of the training components; every hook does nothing unless overridden."""

    name: ClassVar[str]  # the component's name: its --help group and its checkpoint state key
    title: ClassVar[str]  # the heading of its options in 'certify train --help'
    options: ClassVar[tuple[Param, ...]] = ()

    def setup(self, run: TrainingRun) -> None:
        """Bind to the run; refuse (with a ``ParamError``) what cannot work before epoch 1."""

    def start_epoch(self, run: TrainingRun, epoch: int) -> dict[str, Any]:
        """Before the epoch trains; returns metrics measured at this point."""
        return {}

    def example_weights(self) -> Tensor | None:
        """Per-training-image draw weights for this epoch (None: every image once, shuffled)."""
        return None

    def end_epoch(self, run: TrainingRun, epoch: int) -> None:
        """After the epoch trained (all ranks, before evaluation)."""

    def metrics(self) -> dict[str, Any]:
        """What the epoch's log line records from this component."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s output (an empty dict for an older checkpoint)."""
