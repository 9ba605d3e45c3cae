"""Calibration metrics: ECE, classwise ECE and the reliability diagram
(docs/long_tail_noisy.md#calibration-metrics).

Pinned to the CALS repo's definitions (Guo et al. 2017; Kull et al. 2019), because libraries
disagree on the defaults:

- 15 equal-width bins, bin b = (b/15, (b+1)/15]: membership is ``lower < s <= upper``, the edges
  are ``torch.linspace(0, 1, 16)`` in the scores' dtype as in the reference, and a score of
  exactly 0 is in no bin.
- ECE uses the top-label confidence conf_i = max_j p_ij and correctness 1[argmax_j p_ij = y_i];
  ECE = Σ_b (|B_b|/N)·|acc(B_b) − conf(B_b)|. Empty bins contribute 0.
- Classwise ECE bins, for each class j, the score p_ij of **all** samples:
  cECE_j = Σ_b (|B_b|/N)·|mean_{B_b} p_ij − mean_{B_b} 1[y_i = j]|, and cw-ECE = (1/C) Σ_j cECE_j,
  with C the number of probability columns (never inferred from the labels).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from certify.errors import UserError
from certify.fsutil import atomic_writer
from certify.results import check_writable

__all__ = [
    "N_BINS",
    "bin_edges",
    "calibration_bins",
    "calibration_error",
    "classwise_ece",
    "expected_calibration_error",
    "reliability_diagram",
]

N_BINS = 15


def bin_edges(n_bins: int = N_BINS, dtype: torch.dtype = torch.float64) -> Tensor:
    """The n_bins + 1 equal-width edges on [0, 1], computed by ``torch.linspace`` as the reference."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return torch.linspace(0, 1, n_bins + 1, dtype=dtype)


def calibration_bins(scores: Tensor, targets: Tensor,
                     n_bins: int = N_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin (lower, upper]: (count, mean score, mean target); means are 0 for empty bins.

    ``targets`` are 0/1 (correctness or class indicator), both tensors of shape (N,).
    """
    scores = scores.detach().reshape(-1).cpu()
    if not scores.dtype.is_floating_point:
        scores = scores.double()
    targets = targets.detach().double().reshape(-1).cpu()
    if scores.shape != targets.shape:
        raise ValueError(f"scores and targets differ in length: {scores.numel()} vs {targets.numel()}")
    # Edges in the scores' own dtype, as the reference does, so a float32 score on an edge lands
    # in the same bin as there; the sums are then taken in float64.
    edges = bin_edges(n_bins, scores.dtype)
    member = (scores[None, :] > edges[:-1, None]) & (scores[None, :] <= edges[1:, None])  # (B, N)
    m = member.double()
    count = m.sum(dim=1)
    denom = count.clamp(min=1)
    return count, (m @ scores.double()) / denom, (m @ targets) / denom


def calibration_error(scores: Tensor, targets: Tensor, n_bins: int = N_BINS) -> float:
    """Σ_b (|B_b|/N)·|mean target − mean score| over the equal-width bins."""
    n = scores.numel()
    if n == 0:
        raise ValueError("cannot compute a calibration error of zero samples")
    count, mean_score, mean_target = calibration_bins(scores, targets, n_bins)
    return float((count / n * (mean_target - mean_score).abs()).sum())


def _check_probs(probs: Tensor, labels: Tensor) -> None:
    if probs.dim() != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need probs (N, C) and labels (N,), got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = N_BINS) -> float:
    """Top-label ECE of class probabilities ``probs`` (N, C) (softmax them first) against labels."""
    _check_probs(probs, labels)
    conf, pred = probs.max(dim=1)
    return calibration_error(conf, pred == labels, n_bins)


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int = N_BINS) -> float:
    """Classwise ECE: the mean over the C columns of each class's own binned calibration error."""
    _check_probs(probs, labels)
    num_classes = probs.shape[1]
    per_class = [calibration_error(probs[:, j], labels == j, n_bins) for j in range(num_classes)]
    return sum(per_class) / num_classes


def reliability_diagram(confidences: Tensor, correct: Tensor, out_path: str | os.PathLike[str],
                        n_bins: int = N_BINS, title: str | None = None) -> Path:
    """Accuracy vs confidence per bin, with the gap to the diagonal and the ECE, as a PNG.

    Bars are drawn for non-empty bins only. Written atomically (temp file, fsync, rename).
    matplotlib is imported here, so the metrics above do not pay for it.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI have no display
    import matplotlib.pyplot as plt

    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise UserError(f"cannot write reliability diagram {out}: use a .png file name")
    check_writable(out)
    count, mean_conf, acc = calibration_bins(confidences, correct, n_bins)
    ece = calibration_error(confidences, correct, n_bins)
    edges = bin_edges(n_bins).numpy()
    width = 1.0 / n_bins
    used = (count > 0).numpy()
    left = edges[:-1][used]

    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    try:
        ax.bar(left, acc.numpy()[used], width=width, align="edge", color="tab:blue",
               edgecolor="black", lw=0.6, label="accuracy")
        ax.bar(left, (mean_conf - acc).numpy()[used], bottom=acc.numpy()[used], width=width,
               align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", lw=0.6, label="gap")
        ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title + ': ' if title else ''}ECE {100 * ece:.2f}% ({n_bins} bins)")
        ax.set_ylim(0, 1.02)  # a bar at accuracy 1 stays visible below the frame's top
        # below the axes: never over a bar, whichever side of the diagonal the bars fall
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
        fig.tight_layout()
        try:
            with atomic_writer(out, "wb") as f:
                fig.savefig(f, format="png", dpi=150, bbox_inches="tight")
        except OSError as e:
            raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out
