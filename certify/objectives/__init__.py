"""Training objectives, by name. Each says which certificate its model is trained for.

An objective maps a batch to a loss; the trainer owns everything else (data, optimizer, schedule,
checkpoints). Later objectives (SmoothMix, the ℓ∞-dist hinge, LDAM, ...) register here the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from certify.errors import UserError
from certify.objectives.classify import Classify
from certify.objectives.gaussian import GaussianAugmentation
from certify.objectives.linf_margin import LinfHinge, LinfHybridCE, LinfMixture
from certify.objectives.smoothmix import SmoothMix

__all__ = ["Objective", "register_objective", "make_objective", "available_objectives",
           "Classify", "GaussianAugmentation", "SmoothMix", "LinfMixture", "LinfHinge", "LinfHybridCE"]


class Objective(Protocol):
    """One training criterion; ``certification`` is recorded in the checkpoint for ``certify run``.

    ``steps_per_batch``: the trainer splits each loader batch into this many equal chunks and takes
    one optimizer step per chunk (SmoothMix's reference does m steps per batch; most objectives: 1).
    Optional ``schedule(model, step, steps_per_epoch) -> dict`` is called before every loader batch
    (global step from 0) for per-minibatch schedules such as the ℓ∞ nets' p. Objectives with a
    ``label_loss`` (classify, gaussian, smoothmix) also get ``set_class_counts(counts)`` once the
    data is prepared, ``set_example_weighting(absgd)`` for ``--optimizer absgd``,
    ``start_epoch(epoch)`` before and ``after_epoch(model, validation, epoch, device)`` after
    every epoch, and ``state_dict`` / ``load_state_dict`` for resuming.
    """

    name: str
    steps_per_batch: int

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, float]]: ...

    def certification(self) -> dict[str, Any]: ...

    def params(self) -> dict[str, Any]: ...


_REGISTRY: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str, factory: Callable[..., Objective]) -> None:
    _REGISTRY[name] = factory


def available_objectives() -> list[str]:
    return sorted(_REGISTRY)


def make_objective(name: str, **params: Any) -> Objective:
    if name not in _REGISTRY:
        raise UserError(f"unknown objective {name!r}; choose one of: {', '.join(available_objectives())}")
    return _REGISTRY[name](**params)


register_objective("classify", Classify)
register_objective("gaussian", GaussianAugmentation)
register_objective("smoothmix", SmoothMix)
register_objective("linf_mixture", LinfMixture)
register_objective("linf_hinge", LinfHinge)
register_objective("linf_hybrid_ce", LinfHybridCE)
