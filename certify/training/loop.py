"""Train a model with a pluggable objective, checkpointing atomically at the end of every epoch.

Defaults follow the smoothing reference's ``train.py`` (SGD, lr 0.1, momentum 0.9, weight decay 1e-4,
StepLR(30, 0.1), batch 256). A resumed run restores the optimizer, the schedule and the RNG, so it
continues where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from certify.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from certify.errors import UserError
from certify.objectives import make_objective

# Fields that may change when a run is resumed (they do not change what is being trained).
RESUMABLE_CHANGES = ("epochs", "device", "workers", "data_dir")


@dataclass
class TrainConfig:
    """A training run; recorded verbatim in every checkpoint it writes."""

    dataset: str = "fashion-mnist"
    arch: str = "lenet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: str = "gaussian"
    objective_params: dict[str, Any] = field(default_factory=lambda: {"sigma": 0.25})
    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    train_count: int | None = None  # train on the first N training images only (short budgets)
    eval_count: int | None = None  # evaluate on the first N test images (None: all)
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    data_dir: str | None = None

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


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, command: str = "",
          progress: bool = True, log=print) -> Checkpoint:
    """Run (or continue) ``config`` and return the final checkpoint, also saved at ``out``."""
    from certify.data import dataset_info, load_dataset
    from certify.nets import build_model

    config.validate()
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"cannot write checkpoint {out}: directory {out.parent} does not exist")
    objective = make_objective(config.objective, **config.objective_params)
    info = dataset_info(config.dataset)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes=info.num_classes, input_shape=info.input_shape,
                        mean=info.mean, std=info.std, **config.arch_kwargs).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_size, config.lr_gamma)
    start_epoch, history = 0, []
    if resume and out.exists():
        start_epoch, history = _restore(out, config, model, optimizer, scheduler)
        log(f"resuming {out} after epoch {start_epoch}")

    train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir, augment=True)
    test_set = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    train_set = _first(train_set, config.train_count)
    test_set = _first(test_set, config.eval_count)

    ckpt = None
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                            num_workers=config.workers, drop_last=False,
                            generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        lr = optimizer.param_groups[0]["lr"]
        train_stats = _train_epoch(model, objective, loader, optimizer, epoch, device,
                                   desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress)
        scheduler.step()
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch + 1, "lr": lr, **train_stats, "seconds": round(seconds, 2),
                   "images_per_s": round(train_stats["images"] / seconds, 1),
                   **evaluate(model, test_set, objective.certification(), device, config.seed)}
        history.append(metrics)
        log(_epoch_line(metrics, config.epochs))
        ckpt = Checkpoint(
            arch=config.arch, arch_kwargs=dict(config.arch_kwargs), dataset=info.name,
            input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
            std=info.std, certification=objective.certification(),
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            training={"config": dataclasses.asdict(config), "history": history},
            command=command, metrics=metrics, epoch=epoch + 1,
            resume_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "torch_rng": torch.get_rng_state()})
        save_checkpoint(ckpt, out)
    if ckpt is None:  # nothing left to do: the run had already finished
        ckpt = load_checkpoint(out)
        log(f"{out} already trained for {ckpt.epoch} epochs; raise --epochs to train longer")
    return ckpt


def _first(dataset: Any, count: int | None) -> Any:
    return dataset if count is None or count >= len(dataset) else Subset(dataset, range(count))


def _train_epoch(model: nn.Module, objective: Any, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 epoch: int, device: torch.device, desc: str, progress: bool) -> dict[str, float]:
    from tqdm import tqdm

    model.train()
    total_loss = correct = images = 0.0
    with tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress,
              dynamic_ncols=True) as bar:
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for xc, yc in zip(x.chunk(objective.steps_per_batch), y.chunk(objective.steps_per_batch)):
                loss, stats = objective.loss(model, xc, yc, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(yc)
                correct += stats.get("correct", 0)
                images += len(yc)
            bar.set_postfix(loss=f"{total_loss / images:.4f}", refresh=False)
    return {"train_loss": round(total_loss / images, 5),
            "train_noisy_acc": round(correct / images, 5), "images": int(images)}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, certification: dict[str, Any], device: torch.device,
             seed: int = 0, batch_size: int = 1000) -> dict[str, float]:
    """Clean test accuracy, and for smoothing models the accuracy under one noise draw per image."""
    model.eval()
    sigma = certification.get("sigma") if certification.get("kind") == "smoothing" else None
    generator = torch.Generator(device=device).manual_seed(seed)
    clean = noisy = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        clean += (model(x).argmax(1) == y).sum().item()
        if sigma:
            noise = torch.randn(x.shape, generator=generator, device=device) * sigma
            noisy += (model(x + noise).argmax(1) == y).sum().item()
        total += len(y)
    metrics = {"test_acc": round(clean / total, 5)}
    if sigma:
        metrics["test_noisy_acc"] = round(noisy / total, 5)
    return metrics


def _epoch_line(m: dict[str, Any], epochs: int) -> str:
    noisy = f"  test noisy acc {m['test_noisy_acc']:.4f}" if "test_noisy_acc" in m else ""
    return (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train acc "
            f"{m['train_noisy_acc']:.4f}  test acc {m['test_acc']:.4f}{noisy}  lr {m['lr']:.3g}  "
            f"{m['seconds']:.1f} s ({m['images_per_s']:.0f} img/s)")


def _restore(out: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> tuple[int, list[dict[str, Any]]]:
    ckpt = load_checkpoint(out)
    stored = ckpt.training.get("config", {})
    wanted = dataclasses.asdict(config)
    changed = [k for k in wanted if k not in RESUMABLE_CHANGES and stored.get(k) != wanted[k]]
    if changed:
        raise UserError(f"cannot --resume {out}: it was trained with different settings ("
                        + ", ".join(f"{k}={stored.get(k)!r} not {wanted[k]!r}" for k in changed) + ")")
    state = ckpt.resume_state
    if not state:
        raise UserError(f"cannot --resume {out}: it has no optimizer state (a final export?)")
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return ckpt.epoch, list(ckpt.training.get("history", []))
