"""A dataset held entirely in memory as one uint8 tensor.

These datasets are small (at most ~180 MB as uint8), so reading the files once and indexing a
tensor is much faster than decoding per item, and callers can batch straight from `.data`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

Transform = Callable[[Tensor], Tensor]


class InMemoryImageDataset(Dataset):
    """Images `data` (uint8, N x C x H x W) with labels `targets` (int64, N).

    Items are `(x, y)`: `x` float32 in [0, 1] (after the optional `transform`), `y` a Python int.
    """

    def __init__(self, data: Tensor, targets: Tensor, transform: Transform | None = None) -> None:
        if data.dtype != torch.uint8 or data.dim() != 4:
            raise ValueError(f"data must be uint8 N x C x H x W, got {data.dtype} {tuple(data.shape)}")
        if targets.dim() != 1 or targets.shape[0] != data.shape[0]:
            raise ValueError(f"targets must have shape ({data.shape[0]},), got {tuple(targets.shape)}")
        self.data = data
        self.targets = targets.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.data[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.data.shape[1:])
        return f"{type(self).__name__}(n={len(self)}, image={shape}, transform={self.transform!r})"
