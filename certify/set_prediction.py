"""Set-valued prediction: average-k and top-k sets (docs/long_tail_noisy.md#average-k-sets).

Top-k returns exactly k classes for every input. Average-k (Denis & Hebiri 2017; Lorieul et al.,
arXiv 2112.08851) returns Γ(x) = {j : p̂_j(x) ≥ λ̂}: ambiguous inputs get large sets, easy ones
small (even empty) sets, and only the *average* size is k. λ̂ is estimated on held-out
probabilities, which need no labels, by the PlantNet-300K rule (``epoch.py::val_epoch``):

    sort all n·C held-out scores in decreasing order s_(1) ≥ s_(2) ≥ …;  λ̂ = ½ (s_(nk) + s_(nk+1))

Without a tie at the cut (s_(nk) > s_(nk+1)) exactly n·k held-out scores are ≥ λ̂, so the mean
held-out set size is exactly k. With a tie, λ̂ = s_(nk) and every tied score is included, so the
mean size exceeds k; :func:`average_k_tie_fraction` gives the probability q with which to keep a
score equal to λ̂ so that the expected size is k again (the randomization Denis & Hebiri call for;
neither reference repo does it). The third-party quantile form (see the docs),
``np.quantile(scores, 1 − k/C, method='lower')``, is s_(nk+1), the lower end of the midpoint's
interval: with the ≥ rule it admits one extra score, so it matches only with a strict >.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "average_k_sets",
    "average_k_threshold",
    "average_k_tie_fraction",
    "mean_set_size",
    "set_accuracy",
    "set_error",
    "top_k_sets",
]


def _num_selected(n: int, num_classes: int, k: float) -> int:
    """m = n·k, rounded to the nearest integer, required to lie in [1, n·C − 1]."""
    m = round(n * float(k))
    if not 1 <= m <= n * num_classes - 1:
        raise ValueError(f"average-k needs 0 < k < C with n*k >= 1; got k={k}, C={num_classes}, n={n}")
    return m


def _check_probs(probs: Tensor) -> None:
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be (N, C) with N > 0, got {tuple(probs.shape)}")


def average_k_threshold(probs: Tensor, k: float) -> float:
    """λ̂ = ½(s_(nk) + s_(nk+1)) over the held-out scores ``probs`` (n, C).

    k may be fractional; n·k is rounded to the nearest integer m, so the held-out mean set size is
    m/n (= k when n·k is an integer), barring ties at the cut.
    """
    _check_probs(probs)
    n, num_classes = probs.shape
    m = _num_selected(n, num_classes, k)
    s = torch.sort(probs.detach().reshape(-1).double(), descending=True).values
    return float(0.5 * (s[m - 1] + s[m]))


def average_k_tie_fraction(probs: Tensor, k: float, threshold: float) -> float:
    """Probability q of keeping a score equal to ``threshold`` so the expected held-out size is k.

    q = (n·k − #{s > λ̂}) / #{s = λ̂}; 1.0 when nothing ties with λ̂ (the plain ≥ rule is exact).
    """
    _check_probs(probs)
    n, num_classes = probs.shape
    m = _num_selected(n, num_classes, k)
    s = probs.detach().double()
    above = int((s > threshold).sum())
    equal = int((s == threshold).sum())
    if equal == 0:
        return 1.0
    return min(max((m - above) / equal, 0.0), 1.0)


def average_k_sets(probs: Tensor, threshold: float, tie_fraction: float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """Boolean (N, C) mask of Γ(x) = {j : p̂_j(x) ≥ λ̂}.

    Scores exactly at λ̂ are kept with probability ``tie_fraction`` (drawn from ``generator``);
    the default 1.0 is the reference's deterministic ≥ rule and draws nothing.
    """
    _check_probs(probs)
    if not 0.0 <= tie_fraction <= 1.0:
        raise ValueError(f"tie_fraction must be in [0, 1], got {tie_fraction}")
    s = probs.detach().double()
    sets = s > threshold
    at = s == threshold
    if tie_fraction >= 1.0:
        return sets | at
    if tie_fraction > 0.0 and bool(at.any()):
        u = torch.rand(s.shape, generator=generator, dtype=torch.float64).to(s.device)
        sets = sets | (at & (u < tie_fraction))
    return sets


def top_k_sets(probs: Tensor, k: int) -> Tensor:
    """Boolean (N, C) mask of the k highest scores per row (ties resolved by ``torch.topk``)."""
    _check_probs(probs)
    if not 1 <= k <= probs.shape[1]:
        raise ValueError(f"k must be in [1, {probs.shape[1]}], got {k}")
    idx = probs.detach().topk(k, dim=1).indices
    return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device).scatter_(1, idx, True)


def mean_set_size(sets: Tensor) -> float:
    """Average number of classes per set."""
    return float(sets.sum(dim=1).double().mean())


def set_error(sets: Tensor, labels: Tensor) -> float:
    """Fraction of inputs whose true label is not in their set (empty sets always err)."""
    if labels.shape != (sets.shape[0],):
        raise ValueError(f"labels must have shape ({sets.shape[0]},), got {tuple(labels.shape)}")
    hit = sets.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return float((~hit).double().mean())


def set_accuracy(sets: Tensor, labels: Tensor) -> float:
    """1 − :func:`set_error`: the avg-k / top-k accuracy of the references."""
    return 1.0 - set_error(sets, labels)
