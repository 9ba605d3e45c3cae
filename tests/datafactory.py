"""Tiny fake datasets written in the real on-disk formats, for tests that need data files.

Contents are deterministic functions of the indices, so tests can assert exact values.
The writers follow the published format descriptions, independently of certify's readers.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def pattern_images(n: int, channels: int, height: int, width: int, seed: int) -> Tensor:
    """uint8 N x C x H x W images whose pixels depend on (seed, index, channel, row, column)."""
    i = torch.arange(n).view(n, 1, 1, 1)
    c = torch.arange(channels).view(1, channels, 1, 1)
    r = torch.arange(height).view(1, 1, height, 1)
    col = torch.arange(width).view(1, 1, 1, width)
    return ((seed * 101 + i * 37 + c * 89 + r * 11 + col * 3) % 256).to(torch.uint8)


def pattern_labels(n: int, seed: int, num_classes: int = 10) -> Tensor:
    """int64 labels that cycle through the classes with a seed-dependent offset."""
    return (torch.arange(n) * 3 + seed) % num_classes


def write_idx_file(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write an unsigned-byte IDX file: 0, 0, type 0x08, ndim, big-endian uint32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_idx_dataset(
    root: str | Path,
    n_train: int = 20,
    n_test: int = 10,
    *,
    gz: bool = True,
    torchvision_dir: str | None = None,
    height: int = 28,
    width: int = 28,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Write an MNIST-style dataset (4 IDX files) under `root`.

    Files go directly into `root`, or into `root/<torchvision_dir>/raw/` when that is given
    (e.g. "FashionMNIST", "MNIST"). Returns {split: (uint8 N x 1 x H x W, int64 labels)}.
    """
    directory = Path(root) if torchvision_dir is None else Path(root) / torchvision_dir / "raw"
    written: dict[str, tuple[Tensor, Tensor]] = {}
    for seed, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images = pattern_images(n, 1, height, width, seed)
        labels = pattern_labels(n, seed)
        image_stem, label_stem = IDX_STEMS[split]
        suffix = ".gz" if gz else ""
        write_idx_file(directory / f"{image_stem}{suffix}", images[:, 0].numpy(), gz)
        write_idx_file(directory / f"{label_stem}{suffix}", labels.numpy(), gz)
        written[split] = (images, labels)
    return written


def write_cifar_batch(path: Path, rows: np.ndarray, labels: list[int]) -> Path:
    """Write one CIFAR-10 python batch: a pickled dict of N x 3072 uint8 rows and a label list."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": list(labels),
        b"data": rows,
        b"filenames": [f"fake_{k}.png".encode() for k in range(len(labels))],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    return path


def write_cifar10_dataset(
    root: str | Path, n_per_batch: int = 4, *, n_test: int | None = None, torchvision_layout: bool = True
) -> dict[str, tuple[Tensor, Tensor]]:
    """Write five training batches and a test batch under `root/cifar-10-batches-py/` (or
    directly in `root`). Returns {split: (uint8 N x 3 x 32 x 32, int64 labels)}, train batches
    concatenated in order."""
    directory = Path(root) / "cifar-10-batches-py" if torchvision_layout else Path(root)
    n_test = n_per_batch if n_test is None else n_test
    batches = [(name, n_per_batch) for name in CIFAR_TRAIN_BATCHES] + [("test_batch", n_test)]
    parts: dict[str, list[tuple[Tensor, Tensor]]] = {"train": [], "test": []}
    for seed, (name, n) in enumerate(batches):
        images = pattern_images(n, 3, 32, 32, seed)
        labels = pattern_labels(n, seed)
        # A row is the red plane, then green, then blue, each 32 x 32 row-major.
        write_cifar_batch(directory / name, images.reshape(n, 3 * 32 * 32).numpy(), labels.tolist())
        parts["test" if name == "test_batch" else "train"].append((images, labels))
    return {
        split: (torch.cat([images for images, _ in ps]), torch.cat([labels for _, labels in ps]))
        for split, ps in parts.items()
    }
