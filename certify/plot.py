"""Certified-accuracy-vs-radius curves, the standard figure for comparing certified defenses."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from certify.errors import UserError  # noqa: E402
from certify.fsutil import atomic_write_text, atomic_writer  # noqa: E402
from certify.plot_style import DEFAULT_STYLE, FigureStyle, line_style  # noqa: E402
from certify.results import Results, check_writable, read_results, read_sidecar  # noqa: E402
from certify.summary import (  # noqa: E402
    TABLE_FORMATS,
    check_norm,
    default_radii,
    largest_radius,
    summary_table,
    table_as,
)

__all__ = ["plot_certified_accuracy", "plot_per_class_certified", "plot_format", "GRID_POINTS",
           "PlotSpec", "make_plot", "run_names"]

GRID_POINTS = 400  # grid intervals between 0 and max_radius
_MIN_MAX_RADIUS = 0.01  # x range when nothing was certified beyond radius 0
_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".eps": "eps"}
def _legend(ax: Any, style: FigureStyle, **kwargs: Any) -> None:
    if style.legend == "none":
        return
    if style.legend == "outside":
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)
    else:
        ax.legend(loc=style.legend, **kwargs)
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
    style: FigureStyle = DEFAULT_STYLE,
    groups: Sequence[str] | None = None,
) -> Path:
    """Plot certified accuracy against radius, one curve per run, to a .png, .pdf, .svg or .eps file.

    With ``groups`` (one name per run), runs of a group (seeds of one setting) become one curve,
    their mean, with a band of ± one standard deviation; the legend then names the groups.

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
    # certified_accuracy is non-increasing in r; holding each grid value over the interval to its
    # left ("pre") is the conservative way to join the samples.
    curves = [np.asarray(res.certified_accuracy(grid), dtype=float) for res in results_list]
    if groups is not None:
        if len(groups) != len(results_list):
            raise UserError(f"{len(groups)} --group for {len(results_list)} files: give one per file")
        names = list(dict.fromkeys(groups))
        members = [[c for c, g in zip(curves, groups) if g == name] for name in names]
        series = [(name, np.mean(m, axis=0), np.std(m, axis=0)) for name, m in zip(names, members)]
    else:
        series = [(str(label), curve, None) for label, curve in zip(labels, curves)]
    with plt.rc_context({"font.size": style.font_size}):
        fig, ax = plt.subplots(figsize=style.figsize)
    try:
        for k, (name, mean, spread) in enumerate(series):
            look = line_style(k)
            ax.step(grid, mean, where="pre", label=name, lw=1.6, **look)
            if spread is not None and spread.any():
                ax.fill_between(grid, mean - spread, mean + spread, step="pre", alpha=0.2,
                                color=look["color"], linewidth=0)
        ax.set_xlim(0.0, float(max_radius))
        ax.set_ylim(0.0, 1.02)  # a curve at accuracy 1 stays visible above the frame's top
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
        ax.set_xlabel(_XLABEL[norm])
        ax.set_ylabel("certified accuracy")
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if len(results_list):
            _legend(ax, style, fontsize=style.font_size)
        fig.tight_layout()
        _save(fig, out, fmt)
    finally:
        plt.close(fig)
    return out


def plot_format(out: Path) -> str:
    """The figure format of ``out`` from its extension (.png, .pdf, .svg, .eps)."""
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(
            f"cannot write plot {out}: unsupported extension {out.suffix or '(none)'!r}; "
            "use .png, .pdf, .svg or .eps"
        )
    return fmt


def _save(fig, out: Path, fmt: str) -> None:
    save_kwargs: dict[str, object] = {"format": fmt, "bbox_inches": "tight"}  # an outside legend fits
    if fmt == "png":
        save_kwargs["dpi"] = 200
    elif fmt == "pdf":
        save_kwargs["metadata"] = {"CreationDate": None}  # same input -> same bytes
    elif fmt == "svg":
        save_kwargs["metadata"] = {"Date": None}
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
    training count below when ``class_counts`` is given. Written atomically (.png, .pdf, .svg, .eps).
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
            ax.set_ylim(0.0, 1.02)  # a bar at accuracy 1 stays visible below the frame's top
            ax.grid(True, axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel("certified accuracy")
        _legend(axes[0][-1], FigureStyle(legend="outside"), fontsize=8)  # never over the bars
        xlabel = "class" + (" (training images below)" if class_counts is not None else "")
        fig.supxlabel(xlabel, fontsize=9)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        _save(fig, out, fmt)
    finally:
        plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------
# ``certify plot`` as one call: results files in, figure and Markdown table out


@dataclass
class PlotSpec:
    """Everything ``certify plot`` needs; ``results`` are TSV files of 'certify run' or of the
    public smoothing repositories."""

    results: Sequence[Path]
    out: Path  # the figure: .png, .pdf, .svg or .eps
    labels: Sequence[str] = ()  # legend names, one per file; (): run_names(results)
    max_radius: float | None = None  # right end of the x axis; None: just past the largest radius
    radii: Sequence[float] | None = None  # table columns (per class: panels); None: defaults
    title: str | None = None
    table_out: Path | None = None  # also write the table here (.csv, .tex or Markdown)
    per_class: bool = False  # bars of certified accuracy per class instead of the curves
    style: FigureStyle = DEFAULT_STYLE
    groups: Sequence[str] | None = None  # one group name per file: mean ± std curve per group
    counts_from: Path | None = None  # per class: checkpoint whose training counts label the classes


def comparability_warnings(paths: Sequence[Path], runs: Sequence[Results]) -> list[str]:
    """What makes these curves not the whole story or not comparable: an interrupted run, runs
    over different images, runs with different sample counts. An empty file is refused."""
    messages = []
    sidecars = [read_sidecar(p) or {} for p in paths]
    for path, run, car in zip(paths, runs, sidecars):
        if len(run.idx) == 0:
            raise UserError(f"{path} has no rows: there is nothing to plot")
        if car.get("complete") is False:
            planned = car.get("examples")
            messages.append(f"{path} is an interrupted run ({len(run.idx)} of {planned or '?'} images); "
                            f"finish it with its command and --resume")
    images = [frozenset(int(i) for i in run.idx) for run in runs]
    if len(set(images)) > 1:
        messages.append("the runs cover different images (" + ", ".join(
            f"{p}: {len(s)}" for p, s in zip(paths, images)) + "); compare them on a common set")
    samples = {int(car["n"]) for car in sidecars if car.get("n") is not None}
    if len(samples) > 1:
        messages.append(f"the runs use different numbers of samples N ({', '.join(map(str, sorted(samples)))}): "
                        f"the largest certifiable radius differs")
    return messages


def make_plot(spec: PlotSpec) -> str:
    """Draw ``spec``'s figure, write its table where asked, and return the table (Markdown).

    Outputs and labels are checked before any file is read, and files that certify different
    norms are refused: their radii share no axis.
    """
    for path in (spec.out, spec.table_out):
        if path is not None:
            check_writable(path)
    paths = [Path(p) for p in spec.results]
    if spec.labels and len(spec.labels) != len(paths):
        raise UserError(f"{len(spec.labels)} --label for {len(paths)} files: give one per file or none")
    runs = [read_results(p) for p in paths]
    names = list(spec.labels) or run_names(paths)
    for message in comparability_warnings(paths, runs):
        print(f"warning: {message}", file=sys.stderr)
    norms = {(read_sidecar(p) or {}).get("norm", "l2") for p in paths}
    if len(norms) > 1:
        raise UserError("these files certify different norms (ℓ2 and ℓ∞): plot them separately")
    norm = norms.pop()
    if spec.per_class:
        table = _per_class(spec, paths, runs, names, norm)
    elif spec.counts_from is not None:
        raise UserError("--counts-from labels the classes of --per-class: add --per-class")
    else:
        columns = list(spec.radii) if spec.radii else default_radii(runs, norm)
        plot_certified_accuracy(runs, names, spec.out, max_radius=spec.max_radius, norm=norm,
                                title=spec.title, style=spec.style, groups=spec.groups)
        table = summary_table(runs, names, columns)
    if spec.table_out is not None:  # Markdown, or CSV / LaTeX by the file's suffix
        fmt = TABLE_FORMATS.get(Path(spec.table_out).suffix.lower(), "markdown")
        atomic_write_text(spec.table_out, table_as(table, fmt))
    return table


def _per_class(spec: PlotSpec, paths: list[Path], runs: list[Results], names: list[str],
               norm: str) -> str:
    """Draw the per-class figure and return its numbers as a Markdown table."""
    from certify.data import dataset_info
    from certify.evaluation import default_class_radii, per_class_certified_accuracy

    sidecars = [read_sidecar(p) or {} for p in paths]
    datasets = {s.get("dataset") for s in sidecars}
    if len(datasets) != 1 or None in datasets:
        raise UserError("--per-class needs results of 'certify run' on one dataset (their JSON sidecars "
                        "name it): " + ", ".join(f"{p}: {s.get('dataset', 'no sidecar')}"
                                                  for p, s in zip(paths, sidecars)))
    dataset = datasets.pop()
    assert dataset is not None  # checked above
    info = dataset_info(dataset)
    columns = list(spec.radii) if spec.radii else default_class_radii(runs[0], norm)
    curves = [per_class_certified_accuracy(r, info.num_classes, columns) for r in runs]
    counts = _class_counts(spec.counts_from, sidecars[0], info.num_classes)
    # ImageNet's class names are unknown without its files (info.classes is empty): use indices
    class_names = info.classes if len(info.classes) == info.num_classes else None
    plot_per_class_certified(curves, names, columns, spec.out, class_names=class_names,
                             class_counts=counts, norm=norm, title=spec.title)
    head = "| class | training images | " + " | ".join(
        f"{name} r={r:g}" for r in columns for name in names) + " |"
    rows = [head, "|---|---:|" + "---:|" * (len(columns) * len(names))]
    for c, cls in enumerate(class_names or range(info.num_classes)):
        cells = [f"{curve[c, j]:.3f}" for j in range(len(columns)) for curve in curves]
        rows.append(f"| {cls} | {counts[c] if counts else ''} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _class_counts(counts_from: Path | None, sidecar: dict[str, Any],
                  num_classes: int) -> list[int] | None:
    """Training images per class from --counts-from, or from the checkpoint the sidecar names
    when that file is still there unchanged; None when neither records them."""
    from certify.checkpoint import load_checkpoint

    if counts_from is None:
        path = sidecar.get("checkpoint")
        if not path or not Path(path).is_file():
            return None
        ckpt = load_checkpoint(path)
        if ckpt.sha256 != sidecar.get("checkpoint_sha256"):
            return None
    else:
        ckpt = load_checkpoint(counts_from)
    counts = ckpt.training.get("class_counts")
    if counts is None and counts_from is not None:
        raise UserError(f"{counts_from} does not record its training images per class "
                        f"(it was not trained by this version of certify train)")
    if counts is not None and len(counts) != num_classes:
        raise UserError(f"{ckpt.path} records {len(counts)} class counts for {num_classes} classes")
    return counts


def run_names(paths: Sequence[Path]) -> list[str]:
    """Legend names: each file's name (without a .tsv extension), with as many parent folders as it
    takes to tell equal names apart (``seed0/ce``, ``seed1/ce``). ``Path.stem`` would cut the
    reference files ``sigma_0.25`` and ``sigma_0.50`` both down to ``sigma_0``."""
    parts = [p.parts[:-1] + ((p.name[:-4] if p.name.endswith(".tsv") else p.name),) for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(part[-d:]) for part, d in zip(parts, depth, strict=True)]
        clash = [i for i, name in enumerate(names)
                 if names.count(name) > 1 and depth[i] < len(parts[i])]
        if not clash:
            return names
        for i in clash:
            depth[i] += 1
