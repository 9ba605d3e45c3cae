"""Certified-accuracy-vs-radius curves, the standard figure for comparing certified defenses."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from certify.errors import UserError  # noqa: E402
from certify.fsutil import atomic_writer  # noqa: E402
from certify.results import Results, check_writable  # noqa: E402
from certify.summary import check_norm, largest_radius  # noqa: E402

__all__ = ["plot_certified_accuracy", "plot_per_class_certified", "plot_format", "GRID_POINTS"]

GRID_POINTS = 400  # grid intervals between 0 and max_radius
_MIN_MAX_RADIUS = 0.01  # x range when nothing was certified beyond radius 0
_FORMATS = {".png": "png", ".pdf": "pdf"}
_XLABEL = {"l2": "ℓ2 radius", "linf": "ℓ∞ radius"}
_NORM_SYMBOL = {"l2": "ℓ2", "linf": "ℓ∞"}
_MAX_CLASS_TICKS = 30  # more classes than this: label every k-th bar group


def plot_certified_accuracy(
    results_list: Sequence[Results],
    labels: Sequence[str],
    out_path: str | os.PathLike[str],
    max_radius: float | None = None,
    norm: str = "l2",
    title: str | None = None,
) -> Path:
    """Plot certified accuracy against radius, one curve per run, to a .png or .pdf file.

    The curve at r is the fraction of all examples certified correct with radius >= r, sampled
    on a grid of ``GRID_POINTS`` intervals and drawn as steps that never overstate a value
    between grid points. ``max_radius`` defaults to 5% beyond the largest radius in any run.
    The file is written atomically and its path returned.
    """
    out = Path(out_path)
    fmt = plot_format(out)
    check_norm(norm)
    if len(labels) != len(results_list):
        raise ValueError(f"{len(results_list)} results but {len(labels)} labels")
    if max_radius is None:
        max_radius = max(1.05 * largest_radius(results_list), _MIN_MAX_RADIUS)
    elif not (np.isfinite(max_radius) and max_radius > 0):
        raise UserError(f"max radius must be a positive number, got {max_radius}")
    check_writable(out)

    grid = np.linspace(0.0, float(max_radius), GRID_POINTS + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        for res, label in zip(results_list, labels):
            # certified_accuracy is non-increasing in r; holding each grid value over the
            # interval to its left ("pre") is the conservative way to join the samples.
            ax.step(grid, res.certified_accuracy(grid), where="pre", label=str(label), lw=1.6)
        ax.set_xlim(0.0, float(max_radius))
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel(_XLABEL[norm])
        ax.set_ylabel("certified accuracy")
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if len(results_list):
            ax.legend(loc="upper right")
        fig.tight_layout()
        _save(fig, out, fmt)
    finally:
        plt.close(fig)
    return out


def plot_format(out: Path) -> str:
    """The figure format of ``out`` from its extension; anything but .png/.pdf is a user error."""
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(
            f"cannot write plot {out}: unsupported extension {out.suffix or '(none)'!r}; "
            "use .png or .pdf"
        )
    return fmt


def _save(fig, out: Path, fmt: str) -> None:
    save_kwargs: dict[str, object] = {"format": fmt}
    if fmt == "png":
        save_kwargs["dpi"] = 200
    else:
        save_kwargs["metadata"] = {"CreationDate": None}  # same input -> same bytes
    try:
        with atomic_writer(out, "wb") as f:
            fig.savefig(f, **save_kwargs)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None


def plot_per_class_certified(
    curves: Sequence[np.ndarray],
    labels: Sequence[str],
    radii: Sequence[float],
    out_path: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    class_counts: Sequence[int] | None = None,
    norm: str = "l2",
    title: str | None = None,
) -> Path:
    """Bar chart of certified accuracy per class: how robustness is shared by head and tail.

    ``curves`` holds one (C, R) table per model (:func:`certify.evaluation.per_class_certified_accuracy`),
    ``labels`` their legend names, ``radii`` the R radii. One subplot per radius, side by side with
    a shared y axis in [0, 1]; in each, one group of bars per class (one bar per model, a class
    with no rows has no bar). x tick labels are the class names (default: indices) with the
    training count below when ``class_counts`` is given. Written atomically to .png or .pdf.
    """
    out = Path(out_path)
    fmt = plot_format(out)
    check_norm(norm)
    if len(labels) != len(curves):
        raise ValueError(f"{len(curves)} tables but {len(labels)} labels")
    if not curves:
        raise ValueError("no per-class tables to plot")
    radii = [float(r) for r in radii]
    tables = [np.asarray(t, dtype=np.float64) for t in curves]
    num_classes = tables[0].shape[0] if tables[0].ndim == 2 else -1
    for t in tables:
        if t.shape != (num_classes, len(radii)):
            raise ValueError(f"per-class table of shape {t.shape}; expected ({num_classes}, {len(radii)}): "
                             "one row per class, one column per radius")
    for name, seq in (("class names", class_names), ("class counts", class_counts)):
        if seq is not None and len(seq) != num_classes:
            raise ValueError(f"{len(seq)} {name} for {num_classes} classes")
    check_writable(out)

    names = [str(class_names[c]) if class_names is not None else str(c) for c in range(num_classes)]
    ticks = [f"{n}\n{class_counts[c]}" if class_counts is not None else n for c, n in enumerate(names)]
    every = -(-num_classes // _MAX_CLASS_TICKS)
    models = len(tables)
    x = np.arange(num_classes)
    width = 0.8 / models
    panel_width = min(max(2.5, 0.32 * num_classes * (1 + 0.35 * (models - 1))), 14.0)
    fig_width = min(panel_width * len(radii), 36.0)
    # ~0.06 in per character at 7 pt: rotate the names when they would run into each other
    crowded = max(map(len, names[::every])) * 0.06 > 0.85 * every * fig_width / len(radii) / num_classes
    fig, axes = plt.subplots(1, len(radii), sharey=True, squeeze=False, figsize=(fig_width, 3.8))
    try:
        for j, (ax, r) in enumerate(zip(axes[0], radii)):
            for m, (table, label) in enumerate(zip(tables, labels)):
                ax.bar(x + (m - (models - 1) / 2) * width, table[:, j], width,
                       label=str(label), color=f"C{m}")
            ax.set_title(f"{_NORM_SYMBOL[norm]} radius {r:g}")
            ax.set_xticks(x[::every])
            if crowded:
                ax.set_xticklabels(ticks[::every], fontsize=7, rotation=45, ha="right",
                                   rotation_mode="anchor")
            else:
                ax.set_xticklabels(ticks[::every], fontsize=7)
            ax.set_xlim(-0.6, num_classes - 0.4)
            ax.set_ylim(0.0, 1.0)
            ax.grid(True, axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel("certified accuracy")
        axes[0][-1].legend(loc="upper right", fontsize=8)
        xlabel = "class" + (" (training images below)" if class_counts is not None else "")
        fig.supxlabel(xlabel, fontsize=9)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        _save(fig, out, fmt)
    finally:
        plt.close(fig)
    return out

