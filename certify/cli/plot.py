"""``certify plot``: certified accuracy against radius, and the same numbers as a Markdown table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from certify.errors import UserError


@click.command("plot")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file; .png or .pdf.")
@click.option("--label", "labels", multiple=True,
              help="Legend label, once per RESULTS file in order (default: the file names).")
@click.option("--max-radius", type=click.FloatRange(0, min_open=True), default=None,
              help="Right end of the x axis (default: just past the largest radius).")
@click.option("--radii", default=None, metavar="R1,R2,...",
              help="Table columns (default: steps of 0.25 in ℓ2 up to the largest radius).")
@click.option("--title", default=None)
@click.option("--table", "table_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the Markdown table to this file.")
@click.option("--per-class", is_flag=True,
              help="Instead of the curve: bars of certified accuracy per class, one panel per radius "
                   "of --radii (default: 0 and two radii up to the largest), and a table per class.")
@click.option("--counts-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="CKPT",
              help="--per-class: label the classes with the training images per class recorded in "
                   "this checkpoint (default: the first file's checkpoint, if it is still there).")
def plot_command(results: tuple[Path, ...], out: Path, labels: tuple[str, ...],
                 max_radius: float | None, radii: str | None, title: str | None,
                 table_out: Path | None, per_class: bool, counts_from: Path | None) -> None:
    """Plot certified accuracy vs radius for RESULTS files, one line each, and print a table.

    Reads the TSV files of 'certify run' and of the public smoothing repositories alike.
    Certified accuracy at r counts the examples that are correct with radius ≥ r among all rows
    (abstentions included); ACR is the mean of radius × correct.

    With --per-class the figure shows how robustness is shared across classes (head and tail on
    long-tailed data): certified accuracy among each class's rows at each radius.

    \b
    Examples:
      certify plot s025.tsv s050.tsv --label "σ=0.25" --label "σ=0.50" --out curve.png
      certify plot ce.tsv ldam.tsv --per-class --radii 0,0.25,0.5 --counts-from ldam.pt --out c.png
    """
    from certify.fsutil import atomic_write_text
    from certify.plot import plot_certified_accuracy
    from certify.results import read_results, read_sidecar
    from certify.summary import default_radii, summary_table

    from certify.results import check_writable

    for path in (out, table_out):
        if path is not None:
            check_writable(path)
    if labels and len(labels) != len(results):
        raise UserError(f"{len(labels)} --label for {len(results)} files: give one per file or none")
    runs = [read_results(p) for p in results]
    names = list(labels) or run_names(results)
    norms = {(read_sidecar(p) or {}).get("norm", "l2") for p in results}
    if len(norms) > 1:
        raise UserError("these files certify different norms (ℓ2 and ℓ∞): plot them separately")
    norm = norms.pop()
    if per_class:
        table = _per_class(results, runs, names, radii, norm, counts_from, out, title)
    elif counts_from is not None:
        raise UserError("--counts-from labels the classes of --per-class: add --per-class")
    else:
        columns = _parse_radii(radii) if radii else default_radii(runs, norm)
        plot_certified_accuracy(runs, names, out, max_radius=max_radius, norm=norm, title=title)
        table = summary_table(runs, names, columns)
    click.echo(table, nl=False)
    if table_out is not None:
        atomic_write_text(table_out, table)
    click.echo(f"wrote {out}" + (f" and {table_out}" if table_out else ""), err=True)


def _per_class(paths: tuple[Path, ...], runs: list, names: list[str], radii: str | None, norm: str,
               counts_from: Path | None, out: Path, title: str | None) -> str:
    """Draw the per-class figure and return its numbers as a Markdown table."""
    from certify.data import dataset_info
    from certify.evaluation import default_class_radii, per_class_certified_accuracy
    from certify.plot import plot_per_class_certified
    from certify.results import read_sidecar

    sidecars = [read_sidecar(p) or {} for p in paths]
    datasets = {s.get("dataset") for s in sidecars}
    if len(datasets) != 1 or None in datasets:
        raise UserError("--per-class needs results of 'certify run' on one dataset (their JSON sidecars "
                        "name it): " + ", ".join(f"{p}: {s.get('dataset', 'no sidecar')}"
                                                  for p, s in zip(paths, sidecars)))
    info = dataset_info(datasets.pop())
    columns = _parse_radii(radii) if radii else default_class_radii(runs[0], norm)
    curves = [per_class_certified_accuracy(r, info.num_classes, columns) for r in runs]
    counts = _class_counts(counts_from, sidecars[0], info.num_classes)
    plot_per_class_certified(curves, names, columns, out, class_names=info.classes,
                             class_counts=counts, norm=norm, title=title)
    head = "| class | training images | " + " | ".join(
        f"{name} r={r:g}" for r in columns for name in names) + " |"
    rows = [head, "|---|---:|" + "---:|" * (len(columns) * len(names))]
    for c, cls in enumerate(info.classes):
        cells = [f"{curve[c, j]:.3f}" for j in range(len(columns)) for curve in curves]
        rows.append(f"| {cls} | {counts[c] if counts else ''} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _class_counts(counts_from: Path | None, sidecar: dict, num_classes: int) -> list[int] | None:
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


def _parse_radii(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--radii must be numbers separated by commas, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--radii must be non-negative numbers, got {text!r}")
    return values


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


COMMANDS = [plot_command]
