"""NormalizeLayer: the model's first layer, so noise and radii live in [0, 1] pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NormalizeLayer(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel std.

    Putting normalization inside the model (as the smoothing references do) means the certifier adds
    noise to raw pixels, so σ and every certified radius are in pixel units, and training and
    certification cannot disagree about where the noise goes. The buffers are not saved in the state
    dict (the checkpoint records mean/std as plain values), which keeps reference checkpoints loadable.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
