"""``certify eval``: how good a checkpoint's classifier is, beyond accuracy.

One pass over a split gives the softmax probabilities, from which: accuracy, balanced accuracy,
per-class accuracy, ECE and classwise ECE (15 equal-width bins), and set-valued prediction: top-k
against average-k with the same average size (spec imbalance_noise.md §3, §13). Average-k needs
held-out data for its threshold: the split's even-indexed images calibrate it and every metric
of the sets is measured on the odd-indexed ones. Smoothing models are evaluated as their base
classifier on clean inputs; ℓ∞-dist nets at p = ∞.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from certify.calibration import classwise_ece, expected_calibration_error
from certify.set_prediction import (average_k_threshold, average_k_tie_fraction, average_k_sets,
                                    mean_set_size, set_error, top_k_sets)


@dataclass
class Predictions:
    probs: Tensor  # (N, C) softmax probabilities
    labels: Tensor  # (N,)


@torch.no_grad()
def predict_probabilities(model: nn.Module, dataset: Any, device: torch.device,
                          batch_size: int = 1000) -> Predictions:
    from certify.linf_dist.layers import INF, set_p

    model.eval()
    set_p(model, INF)  # no-op for models without ℓp-distance layers
    probs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        probs.append(model(x.to(device)).float().softmax(1).cpu())
        labels.append(torch.as_tensor(y))
    return Predictions(torch.cat(probs), torch.cat(labels))


def per_class_accuracy(pred: Predictions) -> list[float]:
    """Accuracy on each class's examples (nan for a class with none)."""
    hits = pred.probs.argmax(1) == pred.labels
    return [hits[pred.labels == c].float().mean().item() if (pred.labels == c).any() else math.nan
            for c in range(pred.probs.shape[1])]


def report(pred: Predictions, k: int = 2, seed: int = 0) -> dict[str, Any]:
    """Every metric of the module docstring, as plain numbers."""
    per_class = per_class_accuracy(pred)
    present = [a for a in per_class if not math.isnan(a)]
    calibrate, held = slice(0, None, 2), slice(1, None, 2)
    threshold = average_k_threshold(pred.probs[calibrate], k)
    tie = average_k_tie_fraction(pred.probs[calibrate], k, threshold)
    probs, labels = pred.probs[held], pred.labels[held]
    avg_sets = average_k_sets(probs, threshold, tie, generator=torch.Generator().manual_seed(seed))
    top_sets = top_k_sets(probs, k)
    return {
        "examples": len(pred.labels),
        "accuracy": (pred.probs.argmax(1) == pred.labels).float().mean().item(),
        "balanced_accuracy": sum(present) / len(present),
        "per_class_accuracy": per_class,
        "ece": expected_calibration_error(pred.probs, pred.labels),
        "classwise_ece": classwise_ece(pred.probs, pred.labels),
        "k": k,
        "top_k": {"set_size": mean_set_size(top_sets), "set_error": set_error(top_sets, labels)},
        "average_k": {"threshold": threshold, "set_size": mean_set_size(avg_sets),
                      "set_error": set_error(avg_sets, labels)},
    }


def format_report(metrics: dict[str, Any], classes: tuple[str, ...] | None = None) -> str:
    """The report as aligned text lines."""
    k = metrics["k"]
    lines = [
        f"examples           {metrics['examples']}",
        f"accuracy           {metrics['accuracy']:.4f}",
        f"balanced accuracy  {metrics['balanced_accuracy']:.4f}",
        f"ECE (15 bins)      {metrics['ece']:.4f}",
        f"classwise ECE      {metrics['classwise_ece']:.4f}",
        f"top-{k} sets        size {metrics['top_k']['set_size']:.3f}  error "
        f"{metrics['top_k']['set_error']:.4f}   (odd-indexed half)",
        f"average-{k} sets    size {metrics['average_k']['set_size']:.3f}  error "
        f"{metrics['average_k']['set_error']:.4f}   (threshold {metrics['average_k']['threshold']:.4g} "
        f"from the even-indexed half)",
        "per-class accuracy",
    ]
    for c, acc in enumerate(metrics["per_class_accuracy"]):
        name = classes[c] if classes and c < len(classes) else str(c)
        lines.append(f"  {name:<16} {acc:.4f}")
    return "\n".join(lines)
