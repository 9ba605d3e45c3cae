"""Long-tailed views of a balanced training split (docs/long_tail_noisy.md#long-tailed-views).

The LDAM-DRW generator: class i keeps ``int(n_max · ρ^(−i/(C−1)))`` images ("exp") or, for the
"step" profile, the first half of the classes keep n_max and the rest ``int(n_max/ρ)``. Class 0 is
the head and the class order is not shuffled. Which images are kept follows the reference: a
NumPy generator seeded once (default 0), then per class in order: shuffle its indices, keep the
first n_i. A balanced held-out split (CDB's protocol: 25 per class) is taken from each class's
shuffled list *before* the imbalance is applied, so n_max = per-class size − held-out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from certify.params import ParamError

PROFILES = ("exp", "step")


def long_tail_counts(n_max: int, num_classes: int, rho: float, profile: str = "exp") -> list[int]:
    """Images kept per class, head first; ρ = n_max / n_min (ρ = 1: balanced)."""
    if not rho >= 1:
        raise ParamError("imbalance", f"must be ≥ 1 (ρ = n_max / n_min), got {rho}")
    if profile not in PROFILES:
        raise ParamError("imbalance_profile", f"must be one of {', '.join(PROFILES)}, got {profile!r}")
    if profile == "step":
        half = num_classes // 2
        return [n_max] * half + [int(n_max / rho)] * (num_classes - half)
    if num_classes == 1:
        return [n_max]
    return [int(n_max * (1.0 / rho) ** (i / (num_classes - 1))) for i in range(num_classes)]


def long_tail_split(targets: Tensor, num_classes: int, rho: float, profile: str = "exp",
                    held_out: int = 0, seed: int = 0) -> tuple[Tensor, Tensor, list[int]]:
    """(train indices, balanced held-out indices, train counts) into a split with ``targets``.

    n_max is the smallest class's size minus ``held_out``, so every class can give it
    (Fashion-MNIST has 6000 per class and CIFAR-10 5000; MNIST's classes have 5421 to 6742).
    """
    labels = np.asarray(targets.cpu(), dtype=np.int64)
    sizes = np.bincount(labels, minlength=num_classes)
    if held_out < 0:
        raise ParamError("balanced_val", f"must be ≥ 0, got {held_out}")
    n_max = int(sizes.min()) - held_out
    if n_max < 1:
        raise ParamError("balanced_val", f"{held_out} leaves no training images in the smallest "
                                         f"class ({int(sizes.min())} images)")
    counts = long_tail_counts(n_max, num_classes, rho, profile)
    if min(counts) < 1:
        raise ParamError("imbalance", f"{rho} leaves a class with no training image (n_max = {n_max})")
    rng = np.random.RandomState(seed)  # the reference seeds NumPy's global generator the same way
    train, held = [], []
    for c in range(num_classes):
        idx = np.nonzero(labels == c)[0]
        rng.shuffle(idx)
        train.append(idx[:counts[c]])
        held.append(idx[len(idx) - held_out:] if held_out else idx[:0])
    return (torch.from_numpy(np.concatenate(train)), torch.from_numpy(np.concatenate(held)), counts)
