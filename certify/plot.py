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

__all__ = ["plot_certified_accuracy", "GRID_POINTS"]

GRID_POINTS = 400  # grid intervals between 0 and max_radius
_MIN_MAX_RADIUS = 0.01  # x range when nothing was certified beyond radius 0
_FORMATS = {".png": "png", ".pdf": "pdf"}
_XLABEL = {"l2": "ℓ2 radius", "linf": "ℓ∞ radius"}


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
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(
            f"cannot write plot {out}: unsupported extension {out.suffix or '(none)'!r}; "
            "use .png or .pdf"
        )
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
    finally:
        plt.close(fig)
    return out
