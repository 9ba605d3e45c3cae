"""Synthetic label noise: symmetric and asymmetric (class-pair) flips, seeded and reproducible.

Tensors in, tensors out; a noisy-label dataset view is built on top of these later. Every function
returns ``(noisy_targets, flipped_indices, transition_matrix)``:

- ``noisy_targets``: int64 (N,), on the input's device;
- ``flipped_indices``: int64, ascending, the i with noisy ≠ clean (actual changes only);
- ``transition_matrix``: float64 (C, C), T[i, j] = P(noisy = j | clean = i) of the generating
  process (rows sum to 1); :func:`empirical_transition_matrix` measures the realized one.

Following the LogitClip reference (``datasets/cifar.py``; docs/long_tail_noisy.md#label-noise), exactly
⌊r·n⌋ samples are corrupted, chosen uniformly without replacement, rather than each with
probability r, so the realized rate is r up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from certify.data.registry import available_datasets, dataset_info

__all__ = [
    "ASYMMETRIC_PAIRS",
    "asymmetric_noise",
    "dataset_pairs",
    "empirical_transition_matrix",
    "noise_rate",
    "symmetric_noise",
]


def dataset_pairs(name: str) -> dict[int, int] | None:
    """The asymmetric map {source: target} of the registered dataset ``name`` (its
    ``DatasetInfo.asymmetric_pairs``); None for an unknown dataset or one without a map."""
    if name not in available_datasets():
        return None
    return dict(dataset_info(name).asymmetric_pairs) or None


# source class -> class it is mislabelled as, per dataset that has a map: a snapshot of the
# registry's DatasetInfo.asymmetric_pairs (the maps and their sources: certify/data/builtin.py).
# 2→7, 3→8, 5↔6, 7→1: Patrini et al. 2017 as commonly reused (from memory; not checked against a source).
ASYMMETRIC_PAIRS: dict[str, dict[int, int]] = {
    name: pairs for name in available_datasets() if (pairs := dataset_pairs(name)) is not None}


def _count(rate: float, n: int) -> int:
    """⌊r·n⌋, robust to representation error (0.29 * 100 = 28.999999999999996)."""
    return min(n, math.floor(rate * n + 1e-9))


def _check(targets: Tensor, rate: float, num_classes: int) -> Tensor:
    if targets.dim() != 1 or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be a 1-D integer tensor, got {targets.dtype} {tuple(targets.shape)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    t = targets.detach().to("cpu", torch.int64)
    if t.numel() and not (0 <= int(t.min()) and int(t.max()) < num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got [{int(t.min())}, {int(t.max())}]")
    return t


def _finish(clean: Tensor, noisy: Tensor, device: torch.device,
            transition: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    flipped = torch.nonzero(noisy != clean).reshape(-1)
    return noisy.to(device), flipped.to(device), transition


def symmetric_noise(targets: Tensor, rate: float, num_classes: int, generator: torch.Generator,
                    include_true_class: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Corrupt ⌊r·n⌋ random labels, each replaced by a uniformly drawn class.

    Default (flip-to-other, as the LogitClip reference): the new class is uniform over the C − 1
    *other* classes, so the realized noise rate is r and T = (1−r)I + r/(C−1)(J − I).
    ``include_true_class=True`` draws from all C classes (the random labels of the susceptibility
    reference's ``corrupt_prob``, docs/long_tail_noisy.md#susceptibility): some draws keep the true
    label, the rate is r(C−1)/C, T = (1−r)I + (r/C)J.
    """
    clean = _check(targets, rate, num_classes)
    n, c = clean.numel(), num_classes
    chosen = torch.randperm(n, generator=generator)[:_count(rate, n)]
    noisy = clean.clone()
    if include_true_class:
        noisy[chosen] = torch.randint(0, c, (chosen.numel(),), generator=generator)
        transition = torch.full((c, c), rate / c, dtype=torch.float64)
        transition += torch.eye(c, dtype=torch.float64) * (1.0 - rate)
    else:
        offset = torch.randint(1, c, (chosen.numel(),), generator=generator)  # never 0: a new class
        noisy[chosen] = (clean[chosen] + offset) % c
        transition = torch.full((c, c), rate / (c - 1), dtype=torch.float64)
        transition.fill_diagonal_(1.0 - rate)
    return _finish(clean, noisy, targets.device, transition)


def asymmetric_noise(targets: Tensor, rate: float, pairs: str | Mapping[int, int],
                     num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Within each source class c of ``pairs``, relabel ⌊r·n_c⌋ random samples as ``pairs[c]``.

    ``pairs`` is a map {source: target} or the name of a registered dataset that has one
    (``DatasetInfo.asymmetric_pairs``). Classes not in the map keep their labels, so
    T[c, c] = 1 − r, T[c, pairs[c]] = r for mapped c and T[c] = e_c otherwise; the overall rate
    is r times the mapped classes' share. (The LogitClip reference instead draws ⌊r·N⌋ indices
    over *all* samples, so its effective rate is lower.)
    """
    clean = _check(targets, rate, num_classes)
    mapping: Mapping[int, int] | None = dataset_pairs(pairs) if isinstance(pairs, str) else pairs
    if mapping is None:
        known = [n for n in available_datasets() if dataset_pairs(n) is not None]
        raise ValueError(f"no asymmetric map for {pairs!r}; known: {', '.join(known)}")
    for src, dst in mapping.items():
        if not (0 <= src < num_classes and 0 <= dst < num_classes) or src == dst:
            raise ValueError(f"bad class pair {src}->{dst} for {num_classes} classes")
    noisy = clean.clone()
    transition = torch.eye(num_classes, dtype=torch.float64)
    for src in sorted(mapping):  # fixed order: the same seed gives the same labels
        members = torch.nonzero(clean == src).reshape(-1)
        pick = torch.randperm(members.numel(), generator=generator)[:_count(rate, members.numel())]
        noisy[members[pick]] = mapping[src]  # selected on the clean labels, so swaps do not chain
        transition[src, src] = 1.0 - rate
        transition[src, mapping[src]] = rate
    return _finish(clean, noisy, targets.device, transition)


def empirical_transition_matrix(clean: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """Realized T̂[i, j] = #(clean i, noisy j) / #(clean i); a class with no samples gets row e_i."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((clean.cpu().long(), noisy.cpu().long()),
                      torch.ones(clean.numel(), dtype=torch.float64), accumulate=True)
    rows = counts.sum(dim=1, keepdim=True)
    empty = rows.squeeze(1) == 0
    counts[empty] = torch.eye(num_classes, dtype=torch.float64)[empty]
    return counts / counts.sum(dim=1, keepdim=True)


def noise_rate(clean: Tensor, noisy: Tensor) -> float:
    """Fraction of labels that differ."""
    return float((clean.cpu() != noisy.cpu()).double().mean())
