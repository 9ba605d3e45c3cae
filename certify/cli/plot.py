"""``certify plot``: certified accuracy against radius, and the same numbers as a Markdown table."""

from __future__ import annotations

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
def plot_command(results: tuple[Path, ...], out: Path, labels: tuple[str, ...],
                 max_radius: float | None, radii: str | None, title: str | None,
                 table_out: Path | None) -> None:
    """Plot certified accuracy vs radius for RESULTS files, one line each, and print a table.

    Reads the TSV files of 'certify run' and of the public smoothing repositories alike.
    Certified accuracy at r counts the examples that are correct with radius ≥ r among all rows
    (abstentions included); ACR is the mean of radius × correct.

    \b
    Example:
      certify plot s025.tsv s050.tsv --label "σ=0.25" --label "σ=0.50" --out curve.png
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
    names = list(labels) or [p.stem for p in results]
    norms = {(read_sidecar(p) or {}).get("norm", "l2") for p in results}
    if len(norms) > 1:
        raise UserError("these files certify different norms (ℓ2 and ℓ∞): plot them separately")
    norm = norms.pop()
    columns = _parse_radii(radii) if radii else default_radii(runs, norm)
    plot_certified_accuracy(runs, names, out, max_radius=max_radius, norm=norm, title=title)
    table = summary_table(runs, names, columns)
    click.echo(table, nl=False)
    if table_out is not None:
        atomic_write_text(table_out, table)
    click.echo(f"wrote {out}" + (f" and {table_out}" if table_out else ""), err=True)


def _parse_radii(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--radii must be numbers separated by commas, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--radii must be non-negative numbers, got {text!r}")
    return values


COMMANDS = [plot_command]
