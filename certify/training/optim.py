"""The optimizer and its learning-rate schedule: SGD with StepLR (the smoothing references) or Adam
with a per-minibatch cosine (the ℓ∞-dist references)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from certify.params import Param

OPTIMIZER_OPTIONS: tuple[Param, ...] = (
    Param("optimizer", "sgd", "SGD (smoothing references), Adam (ℓ∞-dist references) or ABSGD: "
          "momentum SGD on per-example weights ∝ exp(loss/λ) (see the ABSGD options).", kind=str,
          choices=("sgd", "adam", "absgd")),
    Param("lr", 0.1, "Initial learning rate.", above=0, reference="Cohen et al. 2019, train.py"),
    Param("momentum", 0.9, "SGD momentum.", at_least=0, at_most=1),
    Param("weight_decay", 1e-4, "Weight decay (SGD and Adam).", at_least=0),
    Param("adam_beta1", 0.9, "Adam β1.", at_least=0, below=1),
    Param("adam_beta2", 0.999, "Adam β2.", at_least=0, below=1),
    Param("adam_eps", 1e-8, "Adam ε.", above=0),
    Param("scalar_lr", None, "lr of the v2 net's learnable logit scale (the reference's 0.006; "
          "default: --lr).", above=0, reference="Zhang et al. 2022"),
)
SCHEDULE_OPTIONS: tuple[Param, ...] = (
    Param("epochs", 90, "Training epochs.", kind=int, at_least=1),
    Param("lr_schedule", "step", "step: ×--gamma every --lr-step epochs; cosine: per minibatch down "
          "to 0 at the end.", kind=str, choices=("step", "cosine")),
    Param("lr_step_size", 30, "Multiply the learning rate by --gamma every this many epochs.",
          kind=int, at_least=1, flag="lr_step"),
    Param("lr_gamma", 0.1, "The step schedule's factor.", at_least=0, at_most=1, flag="gamma"),
    Param("cosine_start", 0, "Epochs at the initial lr before the cosine starts (v1 ℓ∞ schedule).",
          kind=int, at_least=0),
)


def make_optimizer(model: nn.Module, settings: Any) -> torch.optim.Optimizer:
    """SGD (also under ABSGD, which only re-weights the loss) or Adam; a net's ``logit_scale``
    gets its own group at ``scalar_lr`` when one is set."""
    scalar = [p for name, p in model.named_parameters() if name.endswith("logit_scale")]
    rest = [p for name, p in model.named_parameters() if not name.endswith("logit_scale")]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if scalar:
        groups.append({"params": scalar, "lr": settings.scalar_lr or settings.lr})
    if settings.optimizer == "adam":
        return torch.optim.Adam(groups, lr=settings.lr, betas=(settings.adam_beta1, settings.adam_beta2),
                                eps=settings.adam_eps, weight_decay=settings.weight_decay)
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Any,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """StepLR, stepped per epoch; or the cosine, stepped per minibatch (``per_step`` below)."""
    if schedule.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: cosine_factor(
            it, schedule.epochs, steps_per_epoch, schedule.cosine_start))
    return torch.optim.lr_scheduler.StepLR(optimizer, schedule.lr_step_size, schedule.lr_gamma)


def per_step(schedule: Any) -> bool:
    """Whether the scheduler steps after every minibatch (else after every epoch)."""
    return schedule.lr_schedule == "cosine"


def cosine_factor(it: int, total_epochs: int, steps_per_epoch: int, start_epoch: int = 0) -> float:
    """lr / lr0: 1 until ``start_epoch`` (v1's e1; v2 uses 0), then a cosine to 0 at the end."""
    start = start_epoch * steps_per_epoch
    if it < start:
        return 1.0
    span = max(1, (total_epochs - start_epoch) * steps_per_epoch)
    return 0.5 * (1.0 + math.cos(math.pi * min(it - start, span) / span))
