"""Training augmentations as plain tensor ops.

Called, they act on one float image (C x H x W) and draw from torch's global RNG, so that
`torch.manual_seed` and DataLoader's per-worker seeding make them reproducible; no PIL round trip.
Their ``batch`` form draws the same distribution for a whole N x C x H x W batch in a few tensor
ops on the batch's device, so a GPU need not wait for tens of microseconds of Python per image.
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

    def batch(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Every image of ``x`` (N x C x H x W) cropped and flipped independently, as ``__call__``
        would (other numbers: the draws are batched). Draws on ``x``'s device, from ``generator`` or
        that device's global RNG, so ``torch.manual_seed`` makes a run reproducible; no host sync."""
        n, _, height, width = x.shape
        p = self.padding
        if p > 0:
            # As __call__: offsets (top, left) in [0, 2p] of the padded image.
            top, left = torch.randint(0, 2 * p + 1, (n, 2), device=x.device, generator=generator).unbind(1)
            padded = F.pad(x, (p, p, p, p), mode="replicate" if self.edge else "constant")
            # A view of every window: (N, C, 2p+1, 2p+1, H, W); image k keeps window (top, left).
            windows = padded.unfold(2, height, 1).unfold(3, width, 1)
            x = windows[torch.arange(n, device=x.device), :, top, left]
        if self.flip:
            mirrored = torch.rand(n, device=x.device, generator=generator) < 0.5
            x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
        return x

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
