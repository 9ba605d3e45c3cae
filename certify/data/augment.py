"""Training augmentations as plain tensor ops.

They act on one float image (C x H x W) and draw from torch's global RNG, so that
`torch.manual_seed` and DataLoader's per-worker seeding make them reproducible; no PIL round trip.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomCropFlip:
    """Pad by `padding` on every side (zeros, or the edge pixels with ``edge=True``), crop back to
    the original size at a uniformly random offset, then mirror left-right with probability 1/2
    if `flip` (the usual CIFAR-10 recipe)."""

    def __init__(self, padding: int = 4, flip: bool = True, edge: bool = False) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding
        self.flip = flip
        self.edge = edge

    def __call__(self, image: Tensor) -> Tensor:
        _, height, width = image.shape
        p = self.padding
        if p > 0:
            # Offsets in [0, 2p] of the padded image, i.e. shifts in [-p, p] of the original.
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            padded = F.pad(image[None], (p, p, p, p), mode="replicate")[0] if self.edge else F.pad(
                image, (p, p, p, p))
            image = padded[:, top : top + height, left : left + width]
        if self.flip and torch.rand(()).item() < 0.5:
            image = image.flip(-1)
        return image.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, flip={self.flip}, edge={self.edge})"


def crop_augmentation(info: Any, edge: bool) -> RandomCropFlip:
    """The ℓ∞-dist references' random crops (docs/linf_dist.md#optimizer-and-augmentation).
    v1 (``edge=False``):
    zero padding by 1 for 28×28 images, by 4 with a flip for 32×32 colour images. v2 (``edge=True``):
    edge padding by 1 for 28×28, by 3 with a flip for colour images."""
    if info.input_shape[0] == 3:
        return RandomCropFlip(padding=3 if edge else 4, flip=True, edge=edge)
    return RandomCropFlip(padding=1, flip=False, edge=edge)
