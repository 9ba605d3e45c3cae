"""What the trainer trains on: the training split, optionally long-tailed, with optional label
noise, a held-out validation split (the last N images, or N per class), and the first
``train_count`` images (docs/long_tail_noisy.md: long-tailed views, label noise, susceptibility, CDB).

Label noise rewrites the training targets once, from a generator seeded by the run's seed; the
clean labels are kept only to measure how much of the noise the model memorizes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from certify.data.long_tail import long_tail_split
from certify.data.noisy_labels import asymmetric_noise, dataset_pairs, noise_rate, symmetric_noise
from certify.errors import UserError
from certify.params import ParamError

NOISE_KINDS = ("symmetric", "asymmetric")


@dataclass
class TrainingData:
    train: Any  # what the optimizer sees
    validation: Any | None  # held out from the training split (CALS, susceptibility)
    noise: dict[str, Any] | None  # recorded in the checkpoint
    flipped: Any | None = None  # the training images whose label the noise changed
    clean_targets: Tensor | None = None  # of the flipped images, for evaluation only
    class_counts: list[int] | None = None  # training images per class (as labelled)
    long_tail: dict[str, Any] | None = None  # the view's parameters, recorded in the checkpoint
    # augment_on batch: the augmentation the loop applies to each batch on the training device
    # (then ``train`` has no per-image transform); None: any augmentation runs in the loader
    batch_augment: Callable[[Tensor], Tensor] | None = None


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
        raise ParamError("label_noise", f"must be none or KIND:RATE with KIND in "
                                        f"{', '.join(NOISE_KINDS)} and 0 < RATE < 1, e.g. "
                                        f"symmetric:0.4; got {text!r}")
    return kind, value


def prepare_training_data(train_set: Any, dataset: str, num_classes: int, label_noise: str,
                          val_count: int, train_count: int | None, seed: int, *,
                          imbalance: float = 1.0, imbalance_profile: str = "exp",
                          balanced_val: int = 0, imbalance_seed: int = 0) -> TrainingData:
    """Choose the long-tailed images and the balanced held-out ones (by clean label), noise the
    labels (all of the split), hold out the last ``val_count`` images, keep the first
    ``train_count`` of the rest."""
    noise = parse_label_noise(label_noise)
    total = len(train_set)
    indices = torch.arange(total)
    validation_indices = None
    long_tail = None
    if imbalance != 1.0 or balanced_val:
        if val_count:
            raise ParamError("val_count", "does not combine with imbalance or balanced_val: hold "
                                          "out a validation split per class with balanced_val N")
        if train_count is not None:
            raise ParamError("train_count", "does not combine with imbalance or balanced_val (the "
                                            "long-tailed view fixes the training images)")
        indices, validation_indices, counts = long_tail_split(
            train_set.targets, num_classes, imbalance, imbalance_profile, balanced_val, imbalance_seed)
        long_tail = {"imbalance": imbalance, "profile": imbalance_profile, "seed": imbalance_seed,
                     "balanced_val": balanced_val, "counts": counts}
    record, flipped_all, clean = None, None, None
    if noise is not None:
        kind, rate = noise
        clean = train_set.targets.clone()
        generator = torch.Generator().manual_seed(seed * 7919 + 17)
        if kind == "symmetric":
            noisy, flipped_all, transition = symmetric_noise(clean, rate, num_classes, generator)
        else:
            pairs = dataset_pairs(dataset)
            if pairs is None:
                raise UserError(f"no asymmetric noise map for {dataset}")
            noisy, flipped_all, transition = asymmetric_noise(clean, rate, pairs, num_classes,
                                                              generator)
        train_set.targets = noisy
        record = {"kind": kind, "rate": rate, "realized_rate": round(noise_rate(clean, noisy), 6),
                  "transition": transition.tolist(), "flipped": flipped_all.tolist()}
    if validation_indices is None:
        if not 0 <= val_count < total:
            raise ParamError("val_count", f"must be in [0, {total}), got {val_count}")
        keep = total - val_count if train_count is None else min(train_count, total - val_count)
        indices = indices[:keep]
        validation_indices = torch.arange(total - val_count, total)
    plain = _without_augmentation(train_set)  # validation and memorization see the images as they are
    validation = Subset(plain, validation_indices.tolist()) if len(validation_indices) else None
    train = train_set if len(indices) == total else Subset(train_set, indices.tolist())
    targets = torch.as_tensor(train_set.targets)[indices]
    data = TrainingData(train, validation, record, long_tail=long_tail,
                        class_counts=torch.bincount(targets, minlength=num_classes).tolist())
    if flipped_all is not None:
        assert clean is not None  # the noise that set flipped_all kept the clean labels
        inside = flipped_all[torch.isin(flipped_all, indices)]
        data.flipped = Subset(plain, inside.tolist())
        data.clean_targets = clean[inside]
    return data


def _without_augmentation(dataset: Any) -> Any:
    """The same images and (possibly noisy) labels without the training transform."""
    if getattr(dataset, "transform", None) is None:
        return dataset
    plain = copy.copy(dataset)
    plain.transform = None
    return plain


def training_targets(data: TrainingData) -> Tensor:
    """The labels of ``data.train`` in its order (what a sampler weights by)."""
    train = data.train
    if isinstance(train, Subset):
        base: Any = train.dataset  # a dataset with .targets, which torch's Dataset type does not declare
        return torch.as_tensor(base.targets)[torch.as_tensor(train.indices)]
    return torch.as_tensor(train.targets)


def checkpoint_training_data(ckpt: Any, data_dir: str | None = None) -> TrainingData:
    """The training data ``ckpt`` was trained on (same view, noise and held-out split), without
    augmentation: what post-hoc steps such as LADC refit on."""
    from certify.data import dataset_info, load_dataset

    config = ckpt.training.get("config")
    if not isinstance(config, dict):
        raise UserError(f"{ckpt.path}: the checkpoint does not record its training configuration")
    info = dataset_info(ckpt.dataset)
    recorded = config.get("data_dir")  # where it was trained: often another machine's path
    if data_dir is None and recorded and Path(recorded).is_dir():
        data_dir = recorded
    train_set = load_dataset(ckpt.dataset, "train", data_dir=data_dir)
    return prepare_training_data(
        train_set, info.name, info.num_classes, config.get("label_noise", "none"),
        config.get("val_count", 0), config.get("train_count"), config.get("seed", 0),
        imbalance=config.get("imbalance", 1.0), imbalance_profile=config.get("imbalance_profile", "exp"),
        balanced_val=config.get("balanced_val", 0), imbalance_seed=config.get("imbalance_seed", 0))


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
    assert data.clean_targets is not None  # prepare_training_data sets it with flipped
    return {"flipped_fit_noisy": round((predictions == noisy).float().mean().item(), 5),
            "flipped_fit_clean": round((predictions == data.clean_targets).float().mean().item(), 5)}
