"""The training data as settings: which dataset, which view of its training split (long-tailed,
noisy labels, held-out validation), which augmentation; and the loading that follows from them."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, cast

import torch
from torch.utils.data import Subset

from certify.data.augment import crop_augmentation
from certify.params import Param, ParamError
from certify.training.views import TrainingData, prepare_training_data

AUGMENT_PLACES = ("auto", "loader", "batch")

DATA_OPTIONS: tuple[Param, ...] = (
    Param("dataset", "fashion-mnist", "fashion-mnist, mnist or cifar10.", kind=str),
    Param("data_dir", None, "Directory with the dataset files.", kind=str),
    Param("augment", "dataset", "Training augmentation: the dataset's standard one, none, or the "
          "ℓ∞-dist nets' random crops: v1 zero-padded (crop-zero), v2 edge-padded (crop-edge).",
          kind=str, choices=("dataset", "none", "crop-zero", "crop-edge")),
    Param("label_noise", "none", "Corrupt the training labels, e.g. symmetric:0.4 (flip to another "
          "class) or asymmetric:0.4 (class pairs); the test labels stay clean.", kind=str,
          metavar="none|KIND:RATE"),
    Param("imbalance", 1.0, "Train on a long-tailed view: class i keeps n_max·RHO^(-i/(C-1)) images "
          "(class 0 the head; LDAM-DRW's generator); the test split stays balanced. 1: off.",
          at_least=1, metavar="RHO", reference="Cao et al. 2019"),
    Param("imbalance_profile", "exp", "exp: the profile above; step: half the classes keep "
          "n_max/RHO.", kind=str, choices=("exp", "step")),
    Param("imbalance_seed", 0, "Seed choosing which images the long-tailed view keeps.", kind=int),
    Param("balanced_val", 0, "Hold out N images per class, before the imbalance, as a balanced "
          "validation split (CDB-W, CDB-S; CDB's protocol uses 25).", kind=int, at_least=0),
    Param("val_count", 0, "Hold out the last N training images as a validation split (CALS, "
          "susceptibility).", kind=int, at_least=0),
    Param("train_count", None, "Train on the first N training images only (short budgets).",
          kind=int, at_least=1),
    Param("eval_count", None, "Evaluate each epoch on the first N test images (default: all).",
          kind=int, at_least=1),
    Param("augment_on", "auto", "Where the training augmentation runs: per image in the DataLoader "
          "(loader), or per batch on the training device after the copy (batch; the same "
          "distribution, other random numbers). auto: batch on CUDA, loader elsewhere.", kind=str,
          choices=AUGMENT_PLACES),
    Param("workers", 0, "DataLoader worker processes (per process under torchrun).", kind=int,
          at_least=0),
)


def load_training_data(settings: Any, info: Any, seed: int,
                       device: torch.device | None = None) -> tuple[TrainingData, Any]:
    """The training view (its ``train`` split augmented) and the first ``eval_count`` test images.

    Resolves ``settings.augment_on`` (auto) for ``device`` (None: the CPU), so that the checkpoint
    records where augmentation ran; with ``batch`` the split's per-image transform is taken off and
    handed to the loop as ``TrainingData.batch_augment``.
    """
    from certify.data import load_dataset

    # Any: a dataset with a settable .transform, which torch's Dataset type does not declare
    train_set: Any = load_dataset(settings.dataset, "train", data_dir=settings.data_dir,
                                  augment=settings.augment == "dataset")
    if settings.augment.startswith("crop-"):
        train_set.transform = crop_augmentation(info, edge=settings.augment == "crop-edge")
    transform = getattr(train_set, "transform", None)
    settings.augment_on = augment_place(settings.augment_on, transform, device)
    batch_augment = None
    if settings.augment_on == "batch" and transform is not None:
        batch_augment = transform.batch
        train_set.transform = None
    test_set = load_dataset(settings.dataset, "test", data_dir=settings.data_dir)
    data = prepare_training_data(train_set, info.name, info.num_classes, settings.label_noise,
                                 settings.val_count, settings.train_count, seed,
                                 imbalance=settings.imbalance,
                                 imbalance_profile=settings.imbalance_profile,
                                 balanced_val=settings.balanced_val,
                                 imbalance_seed=settings.imbalance_seed)
    data.batch_augment = batch_augment
    count = settings.eval_count
    if count is not None and count < len(cast(Sized, test_set)):  # loaded datasets have a length
        test_set = Subset(test_set, range(count))
    return data, test_set


def augment_place(setting: str, transform: Any, device: torch.device | None) -> str:
    """``loader`` or ``batch``: ``setting`` with auto resolved (batch on CUDA, where per-image
    Python would starve the GPU; loader elsewhere, which keeps CPU runs' random numbers). An
    augmentation without a batch form runs in the loader under auto, and refuses ``batch``."""
    batchable = transform is None or callable(getattr(transform, "batch", None))
    if setting == "auto":
        return "batch" if device is not None and device.type == "cuda" and batchable else "loader"
    if setting == "batch" and not batchable:
        raise ParamError("augment_on", f"batch needs an augmentation with a batch form; this "
                                       f"dataset's ({transform!r}) has none: use loader")
    return setting
