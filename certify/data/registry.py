"""Name -> dataset source lookup, and the public functions that go through it.

Everything else in the toolkit names a dataset by a string ("cifar10", ...). Keeping one
dictionary of sources means a new dataset, or a derived view of an existing one (long-tailed,
noisy labels), is added by registering one object; no caller has to change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch.utils.data import Dataset

from certify.errors import UserError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that models and reports need without touching the files."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # per-channel, used by the model's NormalizeLayer
    std: tuple[float, ...]
    classes: tuple[str, ...]
    # ℓ∞-distance nets normalize as their reference does: its per-channel mean and one std for
    # every channel, so the ℓ∞ ball stays a ball. None: this dataset's mean / the mean of its stds.
    linf_mean: tuple[float, ...] | None = None
    linf_std: float | None = None
    # Asymmetric label noise: (source class, class it is mislabelled as) pairs; () = no map.
    asymmetric_pairs: tuple[tuple[int, int], ...] = ()


class DatasetSource(Protocol):
    """What the registry needs from a dataset: its facts, where it lives, and how to load a split.

    A view over another dataset implements this by delegating to the base source.
    """

    @property
    def info(self) -> DatasetInfo:
        """The dataset's facts (read-only: a frozen dataclass field satisfies it)."""
        ...

    def resolve(self, data_dir: Path | None) -> Path:
        """Directory that holds the files; raises UserError if there is none."""
        ...

    def load(self, split: str, data_dir: Path | None, augment: bool, download: bool) -> Dataset:
        """The split as a Dataset of (float32 image in [0, 1], int label)."""
        ...


_REGISTRY: dict[str, DatasetSource] = {}


def register_dataset(source: DatasetSource) -> None:
    """Make `source` loadable under `source.info.name`; re-registering a name is a bug."""
    name = source.info.name
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    _REGISTRY[name] = source


def get_source(name: str) -> DatasetSource:
    """The registered source for `name` (case-insensitive); UserError lists the known names."""
    key = name.strip().lower()
    try:
        return _REGISTRY[key]
    except KeyError:
        known = ", ".join(available_datasets())
        raise UserError(f"unknown dataset {name!r}; known datasets: {known}") from None


def check_split(split: str) -> str:
    """Reject anything but "train"/"test" before any file is touched."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    return split


def _as_path(data_dir: str | os.PathLike[str] | None) -> Path | None:
    if data_dir is None or str(data_dir) == "":
        return None
    return Path(data_dir).expanduser()


def available_datasets() -> list[str]:
    """Registered dataset names, sorted, for help texts and error messages."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """Facts about `name` (classes, shape, normalization) without reading any data."""
    return get_source(name).info


def resolve_data_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory the files of `name` would be read from; UserError says how to get them if absent."""
    return get_source(name).resolve(_as_path(data_dir))


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    augment: bool = False,
    download: bool = False,
) -> Dataset:
    """Load one split of `name` fully into memory.

    `augment=True` applies the dataset's standard training augmentation (see certify.data.builtin).
    `download=True` fetches the files with torchvision when they are not found locally.
    """
    source = get_source(name)
    check_split(split)
    return source.load(split, _as_path(data_dir), augment, download)
