"""Name -> dataset source lookup, and the public functions that go through it.

Everything else in the toolkit names a dataset by a string ("cifar10", ...). Keeping one
dictionary of sources means a new dataset, or a derived view of an existing one (long-tailed,
noisy labels), is added by registering one object; no caller has to change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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

    A view over another dataset implements this by delegating to the base source. Optional extras,
    looked up by name: ``set_input_size(size)`` for data resized on loading (folder:PATH), and
    ``describe() -> dict`` for what a results sidecar must record besides the name.
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
# Datasets named "PREFIX:ARGUMENT" (folder:PATH): prefix -> (source for the argument, usage text).
_FAMILIES: dict[str, tuple[Callable[[str], DatasetSource], str]] = {}


def register_dataset(source: DatasetSource) -> None:
    """Make `source` loadable under `source.info.name`; re-registering a name is a bug."""
    name = source.info.name
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    _REGISTRY[name] = source


def register_dataset_family(prefix: str, make: Callable[[str], DatasetSource], usage: str) -> None:
    """Make "PREFIX:ARGUMENT" names loadable (the argument, e.g. a path, keeps its case); `usage`
    is how the "unknown dataset" message and help texts show the form."""
    if prefix in _FAMILIES:
        raise ValueError(f"dataset family {prefix!r} is already registered")
    _FAMILIES[prefix] = (make, usage)


def get_source(name: str) -> DatasetSource:
    """The registered source for `name` (case-insensitive); UserError lists the known names."""
    head, colon, argument = name.strip().partition(":")
    family = _FAMILIES.get(head.lower()) if colon else None
    if family is not None:
        return family[0](argument)
    key = name.strip().lower()
    try:
        return _REGISTRY[key]
    except KeyError:
        known = ", ".join(available_datasets())
        forms = "".join(f", or {usage}" for _, usage in _FAMILIES.values())
        raise UserError(f"unknown dataset {name!r}; known datasets: {known}{forms}") from None


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


def set_input_size(name: str, size: int) -> str:
    """Set the image side that `name` resizes its data to; returns its canonical name.

    Only datasets resized on loading (folder:PATH) take a size; the others have a fixed one, and
    silently ignoring a requested size would certify other inputs than the user asked for.
    """
    source = get_source(name)
    setter = getattr(source, "set_input_size", None)
    if setter is None:
        shape = "×".join(map(str, source.info.input_shape))
        raise UserError(f"--input-size applies to folder:PATH datasets only; {source.info.name} has a "
                        f"fixed input size ({shape}): drop --input-size")
    setter(size)
    return source.info.name


def describe_dataset(name: str) -> dict[str, Any]:
    """What identifies the data of `name` beyond its name (folder:PATH: the input size), for sidecars."""
    describe = getattr(get_source(name), "describe", None)
    return dict(describe()) if describe is not None else {}


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
    """Load one split of `name`: into memory for the small built-in datasets, lazily (one image
    decoded per item) for image folders such as ImageNet.

    `augment=True` applies the dataset's standard training augmentation (see certify.data.builtin).
    `download=True` fetches the files with torchvision when they are not found locally.
    """
    source = get_source(name)
    check_split(split)
    return source.load(split, _as_path(data_dir), augment, download)
