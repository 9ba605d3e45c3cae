"""Reader for the "python version" of CIFAR-10 (the `cifar-10-batches-py` folder).

Each batch file is a pickled dict with b"data", a uint8 array of N rows of 3072 bytes (the 32x32
red plane, then green, then blue, each row-major), and b"labels", a list of N ints.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from certify.errors import UserError

TORCHVISION_DIR = "cifar-10-batches-py"
CIFAR_BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CHANNELS, SIDE = 3, 32
ROW_BYTES = CHANNELS * SIDE * SIDE


def read_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Images (uint8, N x 3 x 32 x 32) and labels (int64, N) from one batch file.

    Unreadable or malformed files raise UserError naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            # Pickle is the dataset's official distribution format; we only ever unpickle files
            # with the fixed CIFAR batch names in a directory the user pointed us at. The batches
            # were written by Python 2, hence encoding="bytes" (keys come back as bytes).
            batch = pickle.load(f, encoding="bytes")
    except Exception as exc:  # a damaged pickle can fail with almost any exception type
        raise UserError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        raise UserError(f"{path}: b'data' should be uint8 N x {ROW_BYTES}, got {data.dtype} {data.shape}")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: b'labels' is not a list of integers ({exc})") from exc
    if labels.shape != (data.shape[0],):
        raise UserError(f"{path}: {data.shape[0]} images but labels have shape {labels.shape}")
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, CHANNELS, SIDE, SIDE)
    return images, torch.from_numpy(labels)


@dataclass(frozen=True)
class Cifar10Format:
    """CIFAR-10 batches either directly in a directory or in its `cifar-10-batches-py/` folder."""

    def locate(self, directory: Path, shared_root: bool = False) -> Path | None:
        """The directory holding all six batch files, or None. The batch names are unique to
        CIFAR-10, so a shared root may hold them loose as well (`shared_root` is ignored)."""
        for candidate in (directory, directory / TORCHVISION_DIR):
            if all((candidate / name).is_file() for names in CIFAR_BATCHES.values() for name in names):
                return candidate
        return None

    def read(self, directory: Path, split: str) -> tuple[Tensor, Tensor]:
        """All batches of `split` concatenated in file order."""
        parts = [read_cifar_batch(directory / name) for name in CIFAR_BATCHES[split]]
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        return images, labels
