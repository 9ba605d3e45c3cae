"""The optimizer and its learning-rate schedule: SGD with StepLR (the smoothing references), SGD with
a warm-up and drops at fixed epochs (the long-tailed CIFAR references) or Adam with a per-minibatch
cosine (the ℓ∞-dist references)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from certify.params import Param, ParamError

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
    Param("lr_schedule", "step", "step: ×--gamma every --lr-step epochs; multistep: ×--gamma at each "
          "of --lr-milestones, after --lr-warmup epochs of linear warm-up (LDAM-DRW's CIFAR-LT "
          "schedule with --gamma 0.01 --lr-warmup 5); cosine: per minibatch down to 0 at the end.",
          kind=str, choices=("step", "multistep", "cosine")),
    Param("lr_step_size", 30, "Multiply the learning rate by --gamma every this many epochs.",
          kind=int, at_least=1, flag="lr_step"),
    Param("lr_gamma", 0.1, "The step and multistep schedules' factor.", at_least=0, at_most=1,
          flag="gamma"),
    Param("lr_step_delay", 0, "step: each drop lands this many epochs later. 0: Cohen's code "
          "(StepLR stepped before the epoch); 1: SmoothMix's (StepLR.step(epoch) after epoch e "
          "gives epoch e+1 the rate of epoch e).", kind=int, at_least=0,
          reference="jh-jeong/smoothmix code/train.py"),
    Param("lr_milestones", "160,180", "multistep: the epochs (0-based) from which the rate is "
          "multiplied by another --gamma.", kind="floats", metavar="E1,E2,...",
          reference="Cao et al. 2019, cifar_train.py"),
    Param("lr_warmup", 0, "multistep: epoch e < N trains at lr·(e+1)/N (LDAM-DRW: 5).", kind=int,
          at_least=0, reference="Cao et al. 2019, cifar_train.py"),
    Param("cosine_start", 0, "Epochs at the initial lr before the cosine starts (v1 ℓ∞ schedule).",
          kind=int, at_least=0),
)
_SCHEDULE = {p.name: p for p in SCHEDULE_OPTIONS}


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
    """StepLR or the multistep schedule, stepped per epoch; or the cosine, stepped per minibatch
    (``per_step`` below)."""
    if schedule.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: cosine_factor(
            it, schedule.epochs, steps_per_epoch, schedule.cosine_start))
    if schedule.lr_schedule == "multistep":
        milestones = milestone_epochs(schedule.lr_milestones)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: multistep_factor(
            epoch, milestones, schedule.lr_gamma, schedule.lr_warmup))
    if schedule.lr_step_delay:  # the closed form, shifted (StepLR itself has no delay)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: step_factor(
            epoch, schedule.lr_step_size, schedule.lr_gamma, schedule.lr_step_delay))
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


def step_factor(epoch: int, step_size: int, gamma: float, delay: int = 0) -> float:
    """lr / lr0 in 0-based ``epoch`` of the step schedule whose drops land ``delay`` epochs late.

    With delay 1 this is SmoothMix's loop: StepLR's ``step(e)`` after epoch e sets the closed form
    lr0·γ^(e // step) for epoch e + 1."""
    return gamma ** (max(0, epoch - delay) // step_size)


def multistep_factor(epoch: int, milestones: tuple[int, ...], gamma: float, warmup: int = 0) -> float:
    """lr / lr0 in 0-based ``epoch``: (e+1)/warmup during the warm-up, else γ^(milestones ≤ e).

    LDAM-DRW's ``adjust_learning_rate`` (warmup 5, milestones 160 and 180, γ 0.01) in 0-based
    epochs: its ``epoch + 1 > 160`` is e ≥ 160. As there, the warm-up takes precedence."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return gamma ** sum(epoch >= m for m in milestones)


def milestone_epochs(value: Any) -> tuple[int, ...]:
    """The ``lr_milestones`` setting ("160,180", a list or a tuple) as sorted whole epochs."""
    epochs = _SCHEDULE["lr_milestones"].check(value)
    if any(e != int(e) for e in epochs):
        raise ParamError("lr_milestones", f"must be whole epochs, got {value!r}")
    return tuple(int(e) for e in epochs)
