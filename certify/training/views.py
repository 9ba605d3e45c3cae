"""What the trainer trains on: the training split with optional label noise, a held-out
validation split, and the first ``train_count`` images (spec imbalance_noise.md §4-§5).

Label noise rewrites the training targets once, from a generator seeded by the run's seed; the
clean labels are kept only to measure how much of the noise the model memorizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from certify.data.noisy_labels import asymmetric_noise, noise_rate, symmetric_noise
from certify.errors import UserError

NOISE_KINDS = ("symmetric", "asymmetric")
ASYMMETRIC_MAPS = {"cifar10": "cifar10", "mnist": "mnist", "fashion-mnist": "fashion-mnist"}


@dataclass
class TrainingData:
    train: Any  # what the optimizer sees
    validation: Any | None  # held out from the training split (CALS, susceptibility)
    noise: dict[str, Any] | None  # recorded in the checkpoint
    flipped: Any | None = None  # the training images whose label the noise changed
    clean_targets: Tensor | None = None  # of the flipped images, for evaluation only


def parse_label_noise(text: str) -> tuple[str, float] | None:
    """"none", or "KIND:RATE" with KIND symmetric or asymmetric and 0 < RATE < 1."""
    if text in ("", "none"):
        return None
    kind, _, rate = text.partition(":")
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if kind not in NOISE_KINDS or not 0 < value < 1:
        raise UserError(f"--label-noise must be none or KIND:RATE with KIND in {', '.join(NOISE_KINDS)} "
                        f"and 0 < RATE < 1, e.g. symmetric:0.4; got {text!r}")
    return kind, value


def prepare_training_data(train_set: Any, dataset: str, num_classes: int, label_noise: str,
                          val_count: int, train_count: int | None, seed: int) -> TrainingData:
    """Noise the labels (all of the split), hold out the last ``val_count`` images, keep the first
    ``train_count`` of the rest."""
    noise = parse_label_noise(label_noise)
    record, flipped_all = None, None
    if noise is not None:
        kind, rate = noise
        clean = train_set.targets.clone()
        generator = torch.Generator().manual_seed(seed * 7919 + 17)
        if kind == "symmetric":
            noisy, flipped_all, transition = symmetric_noise(clean, rate, num_classes, generator)
        else:
            if dataset not in ASYMMETRIC_MAPS:
                raise UserError(f"no asymmetric noise map for {dataset}")
            noisy, flipped_all, transition = asymmetric_noise(clean, rate, ASYMMETRIC_MAPS[dataset],
                                                              num_classes, generator)
        train_set.targets = noisy
        record = {"kind": kind, "rate": rate, "realized_rate": round(noise_rate(clean, noisy), 6),
                  "transition": transition.tolist(), "flipped": flipped_all.tolist()}
    total = len(train_set)
    if not 0 <= val_count < total:
        raise UserError(f"--val-count must be in [0, {total}), got {val_count}")
    validation = Subset(train_set, range(total - val_count, total)) if val_count else None
    keep = total - val_count if train_count is None else min(train_count, total - val_count)
    train = train_set if keep == total else Subset(train_set, range(keep))
    data = TrainingData(train, validation, record)
    if flipped_all is not None:
        inside = flipped_all[flipped_all < keep]
        data.flipped = Subset(train_set, inside.tolist())
        data.clean_targets = clean[inside]
    return data


@torch.no_grad()
def memorization(model: nn.Module, data: TrainingData, device: torch.device) -> dict[str, float]:
    """On the training images with a flipped label: how many the model predicts as the noisy
    label (memorized) and as the true one."""
    if data.flipped is None or len(data.flipped) == 0:
        return {}
    model.eval()
    predictions = torch.cat([model(x.to(device)).argmax(1).cpu()
                             for x, _ in DataLoader(data.flipped, batch_size=1000)])
    noisy = torch.tensor([data.flipped.dataset.targets[i] for i in data.flipped.indices])
    return {"flipped_fit_noisy": round((predictions == noisy).float().mean().item(), 5),
            "flipped_fit_clean": round((predictions == data.clean_targets).float().mean().item(), 5)}
