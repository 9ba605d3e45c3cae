"""Training augmentations as plain tensor ops.

They act on one float image (C x H x W) and draw from torch's global RNG, so that
`torch.manual_seed` and DataLoader's per-worker seeding make them reproducible; no PIL round trip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomCropFlip:
    """Zero-pad by `padding` on every side, crop back to the original size at a uniformly random
    offset, then mirror left-right with probability 1/2 (the usual CIFAR-10 recipe)."""

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding
        self.flip = flip

    def __call__(self, image: Tensor) -> Tensor:
        _, height, width = image.shape
        p = self.padding
        if p > 0:
            # Offsets in [0, 2p] of the padded image, i.e. shifts in [-p, p] of the original.
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            image = F.pad(image, (p, p, p, p))[:, top : top + height, left : left + width]
        if self.flip and torch.rand(()).item() < 0.5:
            image = image.flip(-1)
        return image.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, flip={self.flip})"
