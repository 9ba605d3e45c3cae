"""Train a model with a pluggable objective, checkpointing atomically at the end of every epoch.

The loop is generic: the objective and the components (:mod:`certify.training.component`) bring
everything method-specific through their hooks, and the per-epoch certified metric comes from the
certificate's method (:func:`certify.methods.epoch_check`). Defaults follow the smoothing reference's
``train.py`` (SGD, lr 0.1, momentum 0.9, weight decay 1e-4, StepLR(30, 0.1), batch 256). A resumed
run restores the optimizer, the schedule, every component's state and the RNG, so it continues
where the interrupted one stopped.

Under ``torchrun`` the same loop runs data-parallel (see ``certify.training.distributed``): each rank
trains on its share of every epoch with ``batch_size`` images per step; rank 0 alone evaluates, logs
and writes the checkpoint and the JSON-lines log while the others wait at a barrier.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from certify.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from certify.errors import UserError
from certify.fsutil import atomic_write_text, check_output_path
from certify.jsonutil import strict_dumps
from certify.locks import output_lock
from certify.objectives import make_objective
from certify.objectives.base import Objective
from certify.training import distributed
from certify.training.component import TrainingComponent, TrainingRun
from certify.training.config import AMP_MODES, COMPONENTS, RESUMABLE_CHANGES, TrainConfig
from certify.training.data import load_training_data
from certify.training.distributed import DistInfo
from certify.training.model import build_training_model
from certify.training.optim import make_optimizer, make_scheduler, per_step
from certify.training.views import memorization

__all__ = ["AMP_MODES", "TrainConfig", "train", "evaluate"]

def train(config: TrainConfig, out: str | Path, *, resume: bool = False, command: str = "",
          progress: bool = True, log: Callable[[str], Any] = print,
          log_path: str | Path | None = None) -> Checkpoint:
    """Run (or continue) ``config`` and return the final checkpoint, also saved at ``out``.

    ``log_path``: append one JSON object per epoch there (None: no file). Under torchrun every rank
    returns the checkpoint; rank 0 is the one that wrote it.
    """
    config.validate()
    out = Path(out)
    check_output_path(out, "checkpoint")  # before any work that would be lost
    log_path = Path(log_path) if log_path is not None else None
    if log_path is not None:
        check_output_path(log_path, "log")
        if log_path.resolve() == out.resolve():
            raise UserError(f"the JSON-lines log and the checkpoint are both {out}: choose another --log")
    objective = make_objective(config.objective, **config.objective_params)
    overrides = {k: v for k, v in objective.arch_overrides().items() if k not in config.arch_kwargs}
    if overrides:  # what the objective needs from the architecture, recorded with it
        config.model.arch_kwargs = {**config.arch_kwargs, **overrides}
    dist_info, device = distributed.init_from_env(config.device)
    try:
        with output_lock(out) if dist_info.is_main else nullcontext():  # rank 0 writes OUT
            return _train(config, out, objective, dist_info, device, resume=resume, command=command,
                          progress=progress and dist_info.is_main,
                          log=log if dist_info.is_main else _silent, log_path=log_path)
    finally:
        distributed.cleanup(dist_info)


def _silent(_line: str) -> None:
    pass


def _train(config: TrainConfig, out: Path, objective: Objective, dist_info: DistInfo,
           device: torch.device, *, resume: bool, command: str, progress: bool,
           log: Callable[[str], Any], log_path: Path | None) -> Checkpoint:
    from certify.data import dataset_info
    from certify.methods import epoch_check
    from certify.nets import model_normalization

    info = dataset_info(config.dataset)
    mean, std = model_normalization(config.arch, info)
    # seed + rank: every rank draws its own noise and augmentation; rank 0 (and a single process)
    # draws exactly what an undistributed run would. DDP then copies rank 0's initial weights.
    torch.manual_seed(config.seed + dist_info.rank)
    model = build_training_model(config.model, info, device)
    data, test_set = load_training_data(config.data, info, config.seed, device)  # resolves augment_on
    run = TrainingRun(config=config, model=model, data=data, test_set=test_set, objective=objective,
                      device=device, num_classes=info.num_classes, distributed=dist_info.enabled)
    components: list[TrainingComponent] = [c(getattr(config, c.name)) for c in COMPONENTS]
    objective.setup(run)
    for component in components:
        component.setup(run)
    train_set = data.train
    sampler = distributed.train_sampler(train_set, dist_info, config.seed) if dist_info.enabled else None
    steps_per_epoch = len(_loader(train_set, config, 0, sampler))
    optimizer = make_optimizer(model, config.optim)
    scheduler = make_scheduler(optimizer, config.schedule, steps_per_epoch)
    run.optimizer = optimizer
    start_epoch = 0
    if resume and out.exists():
        start_epoch, run.history = _restore(out, config, model, optimizer, scheduler, objective,
                                            components, dist_info, device, log)
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
        before: dict[str, Any] = {}
        for part in (*components, objective):
            before |= part.start_epoch(run, epoch)
        weights = None
        for component in components:
            weights = component.example_weights() if weights is None else weights
        loader = _loader(train_set, config, epoch, sampler, weights)
        try:
            sums, scheduled = _train_epoch(model, objective, loader, optimizer, scheduler, epoch,
                                           device, config, f"epoch {epoch + 1}/{config.epochs}",
                                           progress, data.batch_augment)
        except Diverged as diverged:
            advice = (f"{out} keeps epoch {epoch}; train afresh (--force)" if epoch > 0
                      else "nothing was saved; train again")
            raise UserError(f"{diverged}: {advice} with a lower --lr or a gentler schedule") from None
        if not per_step(config.schedule):
            scheduler.step()
        seconds = time.perf_counter() - t0
        sums = distributed.sum_across_ranks(sums)
        distributed.broadcast_buffers(model)  # every replica now equals what rank 0 checkpoints
        for part in (objective, *components):
            part.end_epoch(run, epoch)
        metrics = None
        if dist_info.is_main:
            t1 = time.perf_counter()
            check = epoch_check(plain, objective.certification(), device, config.seed)
            test = evaluate(plain, test_set, check, device)
            shown = [k for k in test if k not in ("test_acc", "test_balanced_acc")] + list(scheduled)
            test |= memorization(plain, data, device)
            parts: dict[str, Any] = {}
            for part in (*components, objective):
                parts |= part.metrics()
            metrics = {"epoch": epoch + 1, "lr": lr, **scheduled, **before, **_averages(sums),
                       **parts, "seconds": round(seconds, 2),
                       "images_per_s": round(sums["images"] / seconds, 1), **test,
                       "eval_seconds": round(time.perf_counter() - t1, 2)}
        # after evaluation, whose DataLoader draws from the global RNG: a resumed run must match
        rng = distributed.all_gather(_rng_state(device))
        metrics = distributed.broadcast_object(metrics)
        run.history.append(metrics)
        ckpt = Checkpoint(
            arch=config.arch, arch_kwargs=dict(config.arch_kwargs), dataset=info.name,
            input_shape=info.input_shape, num_classes=info.num_classes, mean=mean,
            std=std, certification=objective.certification(),
            state_dict={k: v.detach().cpu().contiguous() for k, v in plain.state_dict().items()},
            training={"config": config.record(), "history": run.history,
                      "world_size": dist_info.world_size, "label_noise": data.noise,
                      "class_counts": data.class_counts, "long_tail": data.long_tail},
            command=command, metrics=metrics, epoch=epoch + 1,
            resume_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "objective": objective.state_dict(),
                          **{c.name: c.state_dict() for c in components},
                          "torch_rng": rng[0]["cpu"], "rng_ranks": rng})
        if dist_info.is_main:
            log(_epoch_line(metrics, config.epochs, shown))
            if log_path is not None:
                _append_line(log_path, metrics)
            save_checkpoint(ckpt, out)
        distributed.barrier()  # nobody goes on (or reads OUT) while rank 0 is still writing it
    if ckpt is None:  # nothing left to do: the run had already finished
        ckpt = load_checkpoint(out)
        log(f"{out} already trained for {ckpt.epoch} epochs; raise --epochs to train longer")
    return ckpt


class Diverged(Exception):
    """A non-finite training loss: the weights are lost from then on, so training stops there
    rather than running on in NaN (as the reference scripts do)."""


def _loader(train_set: Any, config: TrainConfig, epoch: int, sampler: DistributedSampler | None,
            weights: torch.Tensor | None = None) -> DataLoader:
    """A new permutation every epoch: this rank's share of it under torchrun, all of it otherwise;
    or, with per-example ``weights``, as many draws with replacement as the split has images."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    if weights is not None:
        # torch's stub says Sequence[float]; the sampler takes a Tensor (torch.as_tensor)
        drawn = WeightedRandomSampler(cast(Sequence[float], weights), len(weights), replacement=True,
                                      generator=generator)
        return DataLoader(train_set, batch_size=config.batch_size, sampler=drawn,
                          num_workers=config.workers, drop_last=False)
    if sampler is not None:
        sampler.set_epoch(epoch)  # the same permutation on every rank, so the shares are disjoint
        return DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                          num_workers=config.workers, drop_last=False)
    return DataLoader(train_set, batch_size=config.batch_size, shuffle=True, num_workers=config.workers,
                      drop_last=False, generator=generator)


def _train_epoch(model: nn.Module, objective: Objective, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scheduler: Any, epoch: int, device: torch.device, config: TrainConfig, desc: str,
                 progress: bool, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """One pass over ``loader``: sums (not means, so that ranks can be added up) and the values the
    objective's schedule set for the last step (p, ε, ...). ``augment``: applied to each batch once
    it is on ``device`` (augment_on batch)."""
    from tqdm import tqdm

    model.train()
    sums: dict[str, float] = {"loss": 0.0, "images": 0, "correct": 0}
    steps = objective.steps_per_batch
    channels_last = config.channels_last
    stepwise = per_step(config.schedule)
    plain = getattr(model, "module", model)
    with tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress,
              dynamic_ncols=True) as bar:
        for batch_index, (x, y) in enumerate(bar):
            scheduled = objective.schedule(plain, epoch * len(loader) + batch_index, len(loader))
            x = x.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            for xc, yc in zip(x.chunk(steps), y.chunk(steps), strict=True):
                with _autocast(config.amp, device):
                    loss, stats = objective.loss(model, xc, yc, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise Diverged(f"training diverged: the loss was {value} at epoch {epoch + 1}, "
                                   f"batch {batch_index + 1} of {len(loader)}, learning rate "
                                   f"{optimizer.param_groups[0]['lr']:g}")
                _accumulate(sums, value, stats, len(yc))
            if stepwise:
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
def evaluate(model: nn.Module, dataset: Any, check: Any, device: torch.device,
             batch_size: int = 1000) -> dict[str, float]:
    """Clean test accuracy and balanced accuracy, plus the certificate's per-epoch metric
    (``check``: a :class:`certify.methods.base.EpochCheck`, or None)."""
    model.eval()
    clean = total = 0
    class_hits: torch.Tensor | int = 0
    class_total: torch.Tensor | int = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        hits = logits.argmax(1) == y
        clean += hits.sum().item()
        class_hits = class_hits + torch.bincount(y[hits], minlength=logits.shape[1]).cpu()
        class_total = class_total + torch.bincount(y, minlength=logits.shape[1]).cpu()
        if check is not None:
            check.update(x, y, logits)
        total += len(y)
    test_acc = round(clean / total, 5)
    assert isinstance(class_hits, torch.Tensor) and isinstance(class_total, torch.Tensor)  # a batch ran
    metrics = {"test_acc": test_acc,
               # balanced: the mean recall over the classes present
               "test_balanced_acc": round((class_hits / class_total)[class_total > 0].mean().item(), 5)}
    return metrics | (check.result() if check is not None else {})


def _epoch_line(m: dict[str, Any], epochs: int, shown: list[str]) -> str:
    """One line per epoch: the common numbers, then ``shown`` (the certificate's metric and the
    objective's per-step schedule values) by name."""
    extra = "".join(f"  {key.replace('test_', 'test ').replace('_', ' ')} {m[key]:.4g}"
                    for key in shown if isinstance(m.get(key), (int, float)))
    if abs(m.get("test_balanced_acc", m["test_acc"]) - m["test_acc"]) > 1e-3:  # an imbalanced test split
        extra += f"  balanced {m['test_balanced_acc']:.4f}"
    return (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train acc "
            f"{m['train_noisy_acc']:.4f}  test acc {m['test_acc']:.4f}{extra}  lr {m['lr']:.3g}  "
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
    with open(path, "a", encoding="utf-8") as f:
        f.write(strict_dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore(out: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, objective: Objective, components: list[TrainingComponent],
             dist_info: DistInfo, device: torch.device,
             log: Callable[[str], Any]) -> tuple[int, list[dict[str, Any]]]:
    ckpt = load_checkpoint(out)
    stored = ckpt.training.get("config", {})
    wanted = config.record()
    defaults = TrainConfig().record()  # options added after OUT was written had these values
    before = {k: stored.get(k, defaults[k]) for k in wanted}
    changed = [k for k in wanted if k not in RESUMABLE_CHANGES and before[k] != wanted[k]]
    if changed:
        raise UserError(f"cannot --resume {out}: it was trained with different settings ("
                        + ", ".join(f"{k}={before[k]!r} not {wanted[k]!r}" for k in changed) + ")")
    if per_step(config.schedule) and before["epochs"] != config.epochs:
        log(f"note: {out} was started for {before['epochs']} epochs; its learning-rate schedule now "
            f"ends at epoch {config.epochs}, so the run differs from an uninterrupted one")
    state = ckpt.resume_state
    if not state:
        raise UserError(f"cannot --resume {out}: it has no optimizer state (a final export?)")
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    objective.load_state_dict(state.get("objective", {}))
    for component in components:
        component.load_state_dict(state.get(component.name, {}))
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
