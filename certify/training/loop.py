"""Train a model with a pluggable objective, checkpointing atomically at the end of every epoch.

Defaults follow the smoothing reference's ``train.py`` (SGD, lr 0.1, momentum 0.9, weight decay 1e-4,
StepLR(30, 0.1), batch 256). A resumed run restores the optimizer, the schedule and the RNG, so it
continues where the interrupted one stopped.

Under ``torchrun`` the same loop runs data-parallel (see ``certify.training.distributed``): each rank
trains on its share of every epoch with ``batch_size`` images per step; rank 0 alone evaluates, logs
and writes the checkpoint and the JSON-lines log while the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, WeightedRandomSampler

from certify.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from certify.errors import UserError
from certify.data.augment import crop_augmentation
from certify.fsutil import atomic_write_text
from certify.linf_dist.schedules import cosine_factor
from certify.losses.absgd import ABSGDWeighting
from certify.objectives import make_objective
from certify.training import distributed
from certify.training.distributed import DistInfo
from certify.training.susceptibility import Susceptibility
from certify.training.sampling import ExampleSampling
from certify.training.views import TrainingData, memorization, prepare_training_data

# Fields that may change when a run is resumed (they do not change what is being trained).
RESUMABLE_CHANGES = ("epochs", "device", "workers", "data_dir", "channels_last")
AMP_MODES = ("off", "bf16")
OPTIMIZERS = ("sgd", "adam", "absgd")
SAMPLERS = ("none", "class-balanced", "cdb")
LR_SCHEDULES = ("step", "cosine")
AUGMENTATIONS = ("dataset", "none", "crop-zero", "crop-edge")


@dataclass
class TrainConfig:
    """A training run; recorded verbatim in every checkpoint it writes."""

    dataset: str = "fashion-mnist"
    arch: str = "lenet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: str = "gaussian"
    objective_params: dict[str, Any] = field(default_factory=lambda: {"sigma": 0.25})
    epochs: int = 90
    batch_size: int = 256  # per process: under torchrun with K processes a step sees K × batch_size
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    optimizer: str = "sgd"  # "adam": Adam with adam_beta1/2, adam_eps and weight_decay (ℓ∞ nets);
    # "absgd": SGD on ABSGD's attention-weighted loss (absgd_* below; long-tailed or noisy labels)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    scalar_lr: float | None = None  # lr of a net's logit_scale (the v2 objective's s), else lr
    lr_schedule: str = "step"  # "cosine": per minibatch to 0 at the end, after cosine_start epochs
    cosine_start: int = 0  # epochs at the initial lr before the cosine starts (v1's e1; v2: 0)
    augment: str = "dataset"  # its standard one; "none"; the ℓ∞-dist v1 "crop-zero" or v2 "crop-edge"
    label_noise: str = "none"  # "symmetric:0.4", "asymmetric:0.4": corrupt the training labels
    imbalance: float = 1.0  # ρ = n_max / n_min of a long-tailed view of the training split (1: off)
    imbalance_profile: str = "exp"  # "exp" (LDAM-DRW's CIFAR-LT) or "step" (half the classes rare)
    imbalance_seed: int = 0  # which images the view keeps (the reference's fixed seed 0)
    balanced_val: int = 0  # hold out N images per class before the imbalance (CDB's 25)
    sampler: str = "none"  # "class-balanced" (LDAM's Resample) or "cdb" (CDB-S), with replacement
    sampler_tau: str = "dynamic"  # CDB-S exponent τ: a number, "dynamic" or "dynamic-imagenet"
    sampler_floor: float = 0.0  # CDB-S floor on the difficulty (0: the paper's rule)
    absgd_lambda: float = 1.0  # ABSGD λ of the second stage (< 0: down-weight hard examples)
    absgd_init_lambda: float = 10.0  # λ of the first stage (≥ 200: plain SGD)
    absgd_lambda_epoch: int = 160  # epoch at which λ switches
    absgd_gamma: float = 0.1  # moving-average rate γ of the normalizer u
    absgd_alpha: float = 0.5  # α, scales u (and so the effective learning rate)
    val_count: int = 0  # hold out the last N training images (CALS, susceptibility)
    susceptibility: int = 0  # measure ζ each epoch on this many held-out images with random labels
    train_count: int | None = None  # train on the first N training images only (short budgets)
    eval_count: int | None = None  # evaluate on the first N test images (None: all)
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    data_dir: str | None = None
    amp: str = "off"  # "bf16": autocast the training forward and loss to bfloat16 (no loss scaling needed)
    channels_last: bool = False  # model and inputs in NHWC memory format (faster convolutions on GPUs)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "lr_step_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        for name in ("train_count", "eval_count"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        for name, allowed in (("amp", AMP_MODES), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES), ("augment", AUGMENTATIONS),
                              ("sampler", SAMPLERS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
        if self.val_count < 0 or self.susceptibility < 0:
            raise UserError("--val-count and --susceptibility must be ≥ 0")
        if self.sampler == "cdb" and not self.balanced_val and not self.val_count:
            raise UserError("--sampler cdb samples by validation difficulty: pass --balanced-val N")
        if not 0 <= self.sampler_floor <= 1:
            raise UserError(f"--sampler-floor must be in [0, 1], got {self.sampler_floor}")
        if not 0 <= self.cosine_start < self.epochs:
            raise UserError(f"--cosine-start must be in [0, epochs), got {self.cosine_start}")


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, command: str = "",
          progress: bool = True, log: Callable[[str], Any] = print,
          log_path: str | Path | None = None) -> Checkpoint:
    """Run (or continue) ``config`` and return the final checkpoint, also saved at ``out``.

    ``log_path``: append one JSON object per epoch there (None: no file). Under torchrun every rank
    returns the checkpoint; rank 0 is the one that wrote it.
    """
    config.validate()
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"cannot write checkpoint {out}: directory {out.parent} does not exist")
    log_path = Path(log_path) if log_path is not None else None
    if log_path is not None and log_path.resolve() == out.resolve():
        raise UserError(f"the JSON-lines log and the checkpoint are both {out}: choose another --log")
    if config.objective_params.get("loss") == "ldam" and "cosine_head" not in config.arch_kwargs:
        config.arch_kwargs = {**config.arch_kwargs, "cosine_head": True}  # LDAM's head (§1), recorded
    objective = make_objective(config.objective, **config.objective_params)
    dist_info, device = distributed.init_from_env(config.device)
    try:
        return _train(config, out, objective, dist_info, device, resume=resume, command=command,
                      progress=progress and dist_info.is_main,
                      log=log if dist_info.is_main else _silent, log_path=log_path)
    finally:
        distributed.cleanup(dist_info)


def _silent(_line: str) -> None:
    pass


def _train(config: TrainConfig, out: Path, objective: Any, dist_info: DistInfo, device: torch.device, *,
           resume: bool, command: str, progress: bool, log: Callable[[str], Any],
           log_path: Path | None) -> Checkpoint:
    from certify.data import dataset_info, load_dataset
    from certify.nets import build_model, model_normalization

    info = dataset_info(config.dataset)
    mean, std = model_normalization(config.arch, info)
    # seed + rank: every rank draws its own noise and augmentation; rank 0 (and a single process)
    # draws exactly what an undistributed run would. DDP then copies rank 0's initial weights.
    torch.manual_seed(config.seed + dist_info.rank)
    model = build_model(config.arch, num_classes=info.num_classes, input_shape=info.input_shape,
                        mean=mean, std=std, **config.arch_kwargs).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir,
                             augment=config.augment == "dataset")
    if config.augment.startswith("crop-"):
        train_set.transform = crop_augmentation(info, edge=config.augment == "crop-edge")
    test_set = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    data = prepare_training_data(train_set, info.name, info.num_classes, config.label_noise,
                                 config.val_count, config.train_count, config.seed,
                                 imbalance=config.imbalance, imbalance_profile=config.imbalance_profile,
                                 balanced_val=config.balanced_val, imbalance_seed=config.imbalance_seed)
    _bind_objective(objective, config, data)
    train_set = data.train
    test_set = _first(test_set, config.eval_count)
    probe = Susceptibility(data.validation if data.validation is not None else test_set,
                           config.susceptibility, info.num_classes, config.seed, device)
    if dist_info.enabled and (config.sampler != "none" or config.optimizer == "absgd"):
        raise UserError("--sampler and --optimizer absgd are not supported under torchrun yet (each "
                        "process would keep its own draws or normalizer)")
    sampler = distributed.train_sampler(train_set, dist_info, config.seed) if dist_info.enabled else None
    weighting = ExampleSampling(config, data, info.num_classes)
    steps_per_epoch = len(_loader(train_set, config, 0, sampler))
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config, steps_per_epoch)
    start_epoch, history = 0, []
    if resume and out.exists():
        start_epoch, history = _restore(out, config, model, optimizer, scheduler, objective, dist_info,
                                        device, log, weighting)
        log(f"resuming {out} after epoch {start_epoch}")
    if log_path is not None and start_epoch < config.epochs:
        _prepare_log(log_path, out, start_epoch, write=dist_info.is_main)

    plain = model
    if dist_info.enabled:
        model = distributed.wrap_model(model, device)
        log(f"data-parallel over {dist_info.world_size} processes: {config.batch_size} images per "
            f"process per step, {dist_info.world_size * config.batch_size} in all")

    ckpt = None
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        zeta = probe.measure(plain, optimizer, epoch, history)
        if hasattr(objective, "start_epoch"):  # DRW's weights, ABSGD's λ stage, UniMix's stop
            objective.start_epoch(epoch)
        loader = _loader(train_set, config, epoch, sampler, weighting.weights())
        sums, scheduled = _train_epoch(model, objective, loader, optimizer,
                            scheduler, epoch, device, config, f"epoch {epoch + 1}/{config.epochs}",
                            progress)
        if config.lr_schedule == "step":
            scheduler.step()
        seconds = time.perf_counter() - t0
        sums = distributed.sum_across_ranks(sums)
        distributed.broadcast_buffers(model)  # every replica now equals what rank 0 checkpoints
        if hasattr(objective, "after_epoch"):  # CALS's multipliers, CDB's difficulty (validation)
            objective.after_epoch(plain, data.validation, epoch, device)
        weighting.after_epoch(plain, data.validation, device)  # CDB-S's difficulty
        metrics = None
        if dist_info.is_main:
            t1 = time.perf_counter()
            test = evaluate(plain, test_set, objective.certification(), device, config.seed)
            test |= memorization(plain, data, device)
            metrics = {"epoch": epoch + 1, "lr": lr, **scheduled, **zeta, **_averages(sums),
                       **weighting.metrics(), **_objective_metrics(objective),
                       "seconds": round(seconds, 2),
                       "images_per_s": round(sums["images"] / seconds, 1), **test,
                       "eval_seconds": round(time.perf_counter() - t1, 2)}
        # after evaluation, whose DataLoader draws from the global RNG: a resumed run must match
        rng = distributed.all_gather(_rng_state(device))
        metrics = distributed.broadcast_object(metrics)
        history.append(metrics)
        ckpt = Checkpoint(
            arch=config.arch, arch_kwargs=dict(config.arch_kwargs), dataset=info.name,
            input_shape=info.input_shape, num_classes=info.num_classes, mean=mean,
            std=std, certification=objective.certification(),
            state_dict={k: v.detach().cpu().contiguous() for k, v in plain.state_dict().items()},
            training={"config": dataclasses.asdict(config), "history": history,
                      "world_size": dist_info.world_size, "label_noise": data.noise,
                      "class_counts": data.class_counts, "long_tail": data.long_tail},
            command=command, metrics=metrics, epoch=epoch + 1,
            resume_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "objective": _objective_state(objective),
                          "sampling": weighting.state_dict(),
                          "torch_rng": rng[0]["cpu"], "rng_ranks": rng})
        if dist_info.is_main:
            log(_epoch_line(metrics, config.epochs))
            if log_path is not None:
                _append_line(log_path, metrics)
            save_checkpoint(ckpt, out)
        distributed.barrier()  # nobody goes on (or reads OUT) while rank 0 is still writing it
    if ckpt is None:  # nothing left to do: the run had already finished
        ckpt = load_checkpoint(out)
        log(f"{out} already trained for {ckpt.epoch} epochs; raise --epochs to train longer")
    return ckpt


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (the smoothing references) or Adam (the ℓ∞-dist references); a net's ``logit_scale``
    gets its own group at ``scalar_lr`` when one is set."""
    scalar = [p for name, p in model.named_parameters() if name.endswith("logit_scale")]
    rest = [p for name, p in model.named_parameters() if not name.endswith("logit_scale")]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if scalar:
        groups.append({"params": scalar, "lr": config.scalar_lr or config.lr})
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                eps=config.adam_eps, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """StepLR, stepped per epoch; or the ℓ∞ references' cosine, stepped per minibatch."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: cosine_factor(
            it, config.epochs, steps_per_epoch, config.cosine_start))
    return torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_size, config.lr_gamma)


def _bind_objective(objective: Any, config: TrainConfig, data: TrainingData) -> None:
    """Give the objective what only the data knows (class counts), attach ABSGD, and refuse
    what cannot work before the first epoch rather than after it."""
    label_loss = getattr(objective, "label_loss", None)
    if label_loss is None:
        if config.optimizer == "absgd":
            raise UserError(f"--optimizer absgd re-weights per-example losses: use --objective "
                            f"classify, gaussian or smoothmix, not {config.objective}")
        return
    objective.set_class_counts(data.class_counts)
    if label_loss.needs_validation() and data.validation is None:
        flag = ("--val-count N" if label_loss.loss == "cals" and config.imbalance == 1
                and not config.balanced_val else "--balanced-val N (per class)")
        raise UserError(f"--loss {label_loss.loss} / --reweight {label_loss.reweighting.rule} needs "
                        f"a validation split: pass {flag}")
    if config.optimizer == "absgd":
        try:
            absgd = ABSGDWeighting(config.absgd_lambda, config.absgd_init_lambda,
                                   config.absgd_lambda_epoch, config.absgd_gamma, config.absgd_alpha)
        except ValueError as err:
            raise UserError(str(err)) from None
        objective.set_example_weighting(absgd)


def _objective_metrics(objective: Any) -> dict[str, Any]:
    label_loss = getattr(objective, "label_loss", None)
    return label_loss.epoch_metrics() if label_loss is not None else {}


def _objective_state(objective: Any) -> dict[str, Any]:
    state = getattr(objective, "state_dict", None)
    return state() if state is not None else {}


def _first(dataset: Any, count: int | None) -> Any:
    return dataset if count is None or count >= len(dataset) else Subset(dataset, range(count))


def _loader(train_set: Any, config: TrainConfig, epoch: int, sampler: DistributedSampler | None,
            weights: torch.Tensor | None = None) -> DataLoader:
    """A new permutation every epoch: this rank's share of it under torchrun, all of it otherwise;
    or, with per-example ``weights``, as many draws with replacement as the split has images."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    if weights is not None:
        drawn = WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
        return DataLoader(train_set, batch_size=config.batch_size, sampler=drawn,
                          num_workers=config.workers, drop_last=False)
    if sampler is not None:
        sampler.set_epoch(epoch)  # the same permutation on every rank, so the shares are disjoint
        return DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                          num_workers=config.workers, drop_last=False)
    return DataLoader(train_set, batch_size=config.batch_size, shuffle=True, num_workers=config.workers,
                      drop_last=False, generator=generator)


def _train_epoch(model: nn.Module, objective: Any, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scheduler: Any, epoch: int, device: torch.device, config: TrainConfig, desc: str,
                 progress: bool) -> tuple[dict[str, float], dict[str, float]]:
    """One pass over ``loader``: sums (not means, so that ranks can be added up) and the values the
    objective's schedule set for the last step (p, ε, ...)."""
    from tqdm import tqdm

    model.train()
    sums: dict[str, float] = {"loss": 0.0, "images": 0, "correct": 0}
    steps = objective.steps_per_batch
    channels_last = config.channels_last
    schedule = getattr(objective, "schedule", None)
    plain = getattr(model, "module", model)
    with tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress,
              dynamic_ncols=True) as bar:
        for batch_index, (x, y) in enumerate(bar):
            scheduled = schedule(plain, epoch * len(loader) + batch_index, len(loader)) if schedule else {}
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last
                     if channels_last and x.dim() == 4 else torch.preserve_format)
            y = y.to(device, non_blocking=True)
            for xc, yc in zip(x.chunk(steps), y.chunk(steps), strict=True):
                with _autocast(config.amp, device):
                    loss, stats = objective.loss(model, xc, yc, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                _accumulate(sums, loss.item(), stats, len(yc))
            if config.lr_schedule == "cosine":
                scheduler.step()
            bar.set_postfix(loss=f"{sums['loss'] / sums['images']:.4f}", refresh=False,
                            **{k: f"{v:.4g}" for k, v in scheduled.items()})
    return sums, scheduled


def _autocast(amp: str, device: torch.device) -> Any:
    """bf16 autocast for the forward and loss; backward and the optimizer step stay in fp32."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _accumulate(sums: dict[str, float], loss: float, stats: dict[str, Any], count: int) -> None:
    """Add a chunk: ``correct`` is a count; other numeric stats are chunk means, weighted by size."""
    sums["loss"] += loss * count
    sums["images"] += count
    for key, value in stats.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key == "correct":
            sums["correct"] += value
        else:
            sums[f"stat/{key}"] = sums.get(f"stat/{key}", 0.0) + value * count


def _averages(sums: dict[str, float]) -> dict[str, Any]:
    """Epoch means: ``train_loss``, ``train_<stat>`` per objective term, ``train_noisy_acc`` from correct."""
    images = sums["images"]
    means: dict[str, Any] = {"train_loss": round(sums["loss"] / images, 5)}
    for key in sorted(k for k in sums if k.startswith("stat/")):
        means.setdefault(f"train_{key[5:]}", round(sums[key] / images, 5))
    means["train_noisy_acc"] = round(sums["correct"] / images, 5)
    means["images"] = int(images)
    return means


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, certification: dict[str, Any], device: torch.device,
             seed: int = 0, batch_size: int = 1000) -> dict[str, float]:
    """Clean test accuracy and balanced accuracy; for smoothing models also the accuracy under one noise draw per image,
    for ℓ∞-dist nets at p = ∞ the Lipschitz-certified accuracy at the recorded ε."""
    model.eval()
    kind = certification.get("kind")
    sigma = certification.get("sigma") if kind == "smoothing" else None
    linf_eps = certification.get("eps") if kind == "linf_dist" and _linf_at_inf(model) else None
    generator = torch.Generator(device=device).manual_seed(seed)
    clean = noisy = certified = total = 0
    class_hits = class_total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        hits = logits.argmax(1) == y
        clean += hits.sum().item()
        class_hits = class_hits + torch.bincount(y[hits], minlength=logits.shape[1]).cpu()
        class_total = class_total + torch.bincount(y, minlength=logits.shape[1]).cpu()
        if sigma:
            noise = torch.randn(x.shape, generator=generator, device=device) * sigma
            noisy += (model(x + noise).argmax(1) == y).sum().item()
        if linf_eps:
            from certify.linf_dist.certifier import lipschitz_radii

            certified += (hits & (lipschitz_radii(model, logits) >= linf_eps)).sum().item()
        total += len(y)
    metrics = {"test_acc": round(clean / total, 5),
               # balanced: the mean recall over the classes present
               "test_balanced_acc": round((class_hits / class_total)[class_total > 0].mean().item(), 5)}
    if sigma:
        metrics["test_noisy_acc"] = round(noisy / total, 5)
    if linf_eps:
        metrics["test_cert_acc"] = round(certified / total, 5)
    return metrics


def _linf_at_inf(model: nn.Module) -> bool:
    """True for an ℓ∞-dist pure net at p = ∞, whose Lipschitz certificate is then valid."""
    from certify.linf_dist.layers import get_p

    p = get_p(model)
    net = getattr(model, "module", model)[-1]
    return p is not None and math.isinf(p) and hasattr(net, "logit_bounds")


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    noisy = f"  test noisy acc {m['test_noisy_acc']:.4f}" if "test_noisy_acc" in m else ""
    if "test_cert_acc" in m:
        noisy += f"  test certified acc {m['test_cert_acc']:.4f}"
    if "p" in m:
        noisy += f"  p {m['p']:.4g}"
    if abs(m.get("test_balanced_acc", m["test_acc"]) - m["test_acc"]) > 1e-3:  # an imbalanced test split
        noisy += f"  balanced {m['test_balanced_acc']:.4f}"
    return (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train acc "
            f"{m['train_noisy_acc']:.4f}  test acc {m['test_acc']:.4f}{noisy}  lr {m['lr']:.3g}  "
            f"{m['seconds']:.1f} s ({m['images_per_s']:.0f} img/s)")


def _prepare_log(path: Path, out: Path, start_epoch: int, write: bool) -> None:
    """A fresh run must not append to an old run's log; a resumed one drops epochs OUT does not hold.

    The line of an epoch is written just before its checkpoint, so a crash in between leaves one
    line too many, which the resumed run removes before it trains that epoch again.
    """
    if not path.parent.is_dir():
        raise UserError(f"cannot write log {path}: directory {path.parent} does not exist")
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if start_epoch == 0 and any(line.strip() for line in lines):
        raise UserError(f"log {path} already holds epochs of another run and {out} does not exist: "
                        f"delete the log or choose another --log")
    keep = [line for line in lines if _line_epoch(line) <= start_epoch]
    if write and len(keep) < len(lines):
        atomic_write_text(path, "".join(keep))


def _line_epoch(line: str) -> int:
    try:
        record = json.loads(line)
    except ValueError:
        return 0
    epoch = record.get("epoch", 0) if isinstance(record, dict) else 0
    return epoch if isinstance(epoch, int) else 0


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """One strict-JSON line (NaN/inf become null), flushed to disk before the checkpoint is written."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore(out: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, objective: Any, dist_info: DistInfo, device: torch.device,
             log: Callable[[str], Any], weighting: ExampleSampling) -> tuple[int, list[dict[str, Any]]]:
    ckpt = load_checkpoint(out)
    stored = ckpt.training.get("config", {})
    wanted = dataclasses.asdict(config)
    defaults = dataclasses.asdict(TrainConfig())  # fields added after OUT was written had these values
    before = {k: stored.get(k, defaults[k]) for k in wanted}
    changed = [k for k in wanted if k not in RESUMABLE_CHANGES and before[k] != wanted[k]]
    if changed:
        raise UserError(f"cannot --resume {out}: it was trained with different settings ("
                        + ", ".join(f"{k}={before[k]!r} not {wanted[k]!r}" for k in changed) + ")")
    if config.lr_schedule == "cosine" and before["epochs"] != config.epochs:
        log(f"note: {out} was started for {before['epochs']} epochs; its cosine learning rate now "
            f"ends at epoch {config.epochs}, so the run differs from an uninterrupted one")
    state = ckpt.resume_state
    if not state:
        raise UserError(f"cannot --resume {out}: it has no optimizer state (a final export?)")
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if hasattr(objective, "load_state_dict"):
        objective.load_state_dict(state.get("objective", {}))
    weighting.load_state_dict(state.get("sampling", {}))
    ranks = state.get("rng_ranks") or [{"cpu": state["torch_rng"]}]
    if len(ranks) != dist_info.world_size:
        log(f"note: {out} was written by {len(ranks)} process(es) and this run has "
            f"{dist_info.world_size}: it continues, but not bit-for-bit as the original would have")
    if dist_info.rank < len(ranks):
        torch.set_rng_state(ranks[dist_info.rank]["cpu"])
        if device.type == "cuda" and "cuda" in ranks[dist_info.rank]:
            torch.cuda.set_rng_state(ranks[dist_info.rank]["cuda"], device)
    else:  # a rank the checkpoint has no state for: a fresh stream, distinct per rank and epoch
        torch.manual_seed(config.seed + dist_info.rank + 1_000_003 * ckpt.epoch)
    return ckpt.epoch, list(ckpt.training.get("history", []))
