"""Datasets read from files on disk: where to look, how to download, and the one-line error.

Search order when no directory is given explicitly:
  1. `$CERTIFY_DATA/<name>`, then `$CERTIFY_DATA` itself (a root shared by several datasets);
  2. system-wide copies (e.g. Debian's `/usr/share/datasets/fashion-mnist`);
  3. `./data/<name>`.
An explicit `data_dir` is the only place searched: if the user names a directory, silently
reading a different copy would be a surprise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import Tensor

from certify.data.memory import InMemoryImageDataset, Transform
from certify.data.registry import DatasetInfo, check_split
from certify.errors import UserError

ENV_VAR = "CERTIFY_DATA"


class DiskFormat(Protocol):
    """How one dataset's files are laid out and parsed (see idx.IdxFormat, cifar.Cifar10Format)."""

    def locate(self, directory: Path, shared_root: bool = False) -> Path | None:
        """The directory inside `directory` that holds every file of the dataset, or None."""
        ...

    def read(self, directory: Path, split: str) -> tuple[Tensor, Tensor]:
        """uint8 images (N x C x H x W) and int64 labels (N) of `split`."""
        ...


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class FileDataset:
    """A registry source backed by files in one of the known layouts."""

    info: DatasetInfo
    disk_format: DiskFormat
    torchvision_class: str  # attribute of torchvision.datasets used for --download
    how_to_get: str  # end of the "not found" message: how the user obtains the files
    system_dirs: tuple[Path, ...] = ()
    train_augmentation: Callable[[], Transform] | None = None

    def search_dirs(self, data_dir: Path | None) -> list[tuple[Path, bool]]:
        """(directory, is_shared_root) pairs in the order they are tried."""
        if data_dir is not None:
            return [(data_dir, False)]
        dirs: list[tuple[Path, bool]] = []
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            root = Path(env).expanduser()
            dirs += [(root / self.info.name, False), (root, True)]
        dirs += [(d, False) for d in self.system_dirs]
        dirs.append((Path.cwd() / "data" / self.info.name, False))
        return dirs

    def find(self, data_dir: Path | None) -> Path | None:
        """First directory holding the complete dataset, or None."""
        for directory, shared in self.search_dirs(data_dir):
            found = self.disk_format.locate(directory, shared)
            if found is not None:
                return found
        return None

    def not_found_message(self, data_dir: Path | None) -> str:
        looked = ", ".join(str(d) for d, _ in self.search_dirs(data_dir))
        return f"{self.info.name} data not found (looked in: {looked}); {self.how_to_get}"

    def resolve(self, data_dir: Path | None) -> Path:
        """Directory holding the files; UserError with the search path and how to get them."""
        found = self.find(data_dir)
        if found is None:
            raise UserError(self.not_found_message(data_dir))
        return found

    def download(self, data_dir: Path | None) -> Path:
        """Fetch the files with torchvision into `data_dir` (default `./data/<name>`)."""
        target = data_dir if data_dir is not None else Path.cwd() / "data" / self.info.name
        try:
            import torchvision.datasets  # imported here: slow, and only needed online

            dataset_class = getattr(torchvision.datasets, self.torchvision_class)
            dataset_class(root=str(target), train=True, download=True)
        except Exception as exc:  # network, disk and checksum failures all end the same way
            reason = _one_line(f"{type(exc).__name__}: {exc}")
            raise UserError(f"downloading {self.info.name} into {target} failed: {reason}") from exc
        found = self.disk_format.locate(target, False)
        if found is None:
            raise UserError(f"downloaded {self.info.name} into {target}, but the expected files are missing")
        return found

    def load(self, split: str, data_dir: Path | None, augment: bool, download: bool) -> InMemoryImageDataset:
        """Read `split` into memory, downloading first if asked to and nothing is found locally."""
        check_split(split)
        found = self.find(data_dir)
        if found is None:
            if not download:
                raise UserError(self.not_found_message(data_dir))
            found = self.download(data_dir)
        images, labels = self.disk_format.read(found, split)
        self._check(images, labels, found, split)
        transform = self.train_augmentation() if augment and self.train_augmentation is not None else None
        return InMemoryImageDataset(images, labels, transform)

    def _check(self, images: Tensor, labels: Tensor, found: Path, split: str) -> None:
        """Catch files of the wrong dataset (shape) or corrupt labels before training on them."""
        if tuple(images.shape[1:]) != self.info.input_shape:
            raise UserError(
                f"{found}: {split} images have shape {tuple(images.shape[1:])}, "
                f"expected {self.info.input_shape} for {self.info.name}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.info.num_classes):
            raise UserError(
                f"{found}: {split} labels span {int(labels.min())}..{int(labels.max())}, "
                f"expected 0..{self.info.num_classes - 1} for {self.info.name}"
            )
