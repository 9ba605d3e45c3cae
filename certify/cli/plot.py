"""``certify plot``: certified accuracy against radius, and the same numbers as a Markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from certify.errors import UserError
from certify.plot_style import LEGEND_PLACES


@click.command("plot")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file: .png, .pdf, .svg or .eps.")
@click.option("--label", "labels", multiple=True,
              help="Legend label, once per RESULTS file in order (default: the file names).")
@click.option("--max-radius", type=click.FloatRange(0, min_open=True), default=None,
              help="Right end of the x axis (default: just past the largest radius).")
@click.option("--radii", default=None, metavar="R1,R2,...",
              help="Table columns (default: steps of 0.25 in ℓ2 up to the largest radius).")
@click.option("--title", default=None)
@click.option("--table", "table_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table to this file: CSV for .csv, LaTeX (booktabs) for .tex, "
                   "Markdown otherwise.")
@click.option("--group", "groups", multiple=True, metavar="NAME",
              help="Group of each RESULTS file, once per file in order (e.g. the setting, with one "
                   "file per seed): one curve per group, the mean, with a ± one standard deviation "
                   "band.")
@click.option("--figsize", type=(float, float), default=(6.4, 4.4), show_default=True,
              metavar="W H", help="Figure size in inches.")
@click.option("--font-size", type=float, default=10.0, show_default=True)
@click.option("--legend", type=click.Choice(LEGEND_PLACES),
              default="upper right", show_default=True,
              help="Where the legend goes; outside: right of the axes, never over a curve.")
@click.option("--per-class", is_flag=True,
              help="Instead of the curve: bars of certified accuracy per class, one panel per radius "
                   "of --radii (default: 0 and two radii up to the largest), and a table per class.")
@click.option("--counts-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="CKPT",
              help="--per-class: label the classes with the training images per class recorded in "
                   "this checkpoint (default: the first file's checkpoint, if it is still there).")
def plot_command(results: tuple[Path, ...], out: Path, labels: tuple[str, ...],
                 max_radius: float | None, radii: str | None, title: str | None,
                 table_out: Path | None, groups: tuple[str, ...], figsize: tuple[float, float],
                 font_size: float, legend: str, per_class: bool, counts_from: Path | None) -> None:
    """Plot certified accuracy vs radius for RESULTS files, one line each, and print a table.

    Reads the TSV files of 'certify run' and of the public smoothing repositories alike.
    Certified accuracy at r counts the examples that are correct with radius ≥ r among all rows
    (abstentions included); ACR is the mean of radius × correct.

    With --per-class the figure shows how robustness is shared across classes (head and tail on
    long-tailed data): certified accuracy among each class's rows at each radius.

    \b
    Examples:
      certify plot s025.tsv s050.tsv --label "σ=0.25" --label "σ=0.50" --out curve.png
      certify plot ce-s0.tsv ce-s1.tsv ldam-s0.tsv ldam-s1.tsv --group CE --group CE \\
          --group LDAM --group LDAM --legend outside --figsize 5 3.5 --out seeds.pdf
      certify plot ce.tsv ldam.tsv --per-class --radii 0,0.25,0.5 --counts-from ldam.pt --out c.png
    """
    from certify.plot import PlotSpec, make_plot
    from certify.plot_style import FigureStyle

    spec = PlotSpec(results=results, out=out, labels=labels, max_radius=max_radius,
                    radii=_parse_radii(radii) if radii else None, title=title, table_out=table_out,
                    per_class=per_class, counts_from=counts_from,
                    style=FigureStyle(figsize=figsize, font_size=font_size, legend=legend),
                    groups=groups or None)
    click.echo(make_plot(spec), nl=False)
    click.echo(f"wrote {out}" + (f" and {table_out}" if table_out else ""), err=True)


def _parse_radii(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--radii must be numbers separated by commas, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"--radii must be non-negative numbers, got {text!r}")
    return values


def __getattr__(name: str) -> Any:
    """``run_names`` moved to certify.plot; importing it only when asked keeps --help fast."""
    if name == "run_names":
        from certify.plot import run_names

        return run_names
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


COMMANDS = [plot_command]
