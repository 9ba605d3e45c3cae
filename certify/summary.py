"""Summaries of results tables: certified accuracy at chosen radii, ACR, abstentions, as Markdown."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from certify.errors import UserError
from certify.results import Results

__all__ = ["NORMS", "default_radii", "l2_step", "summary_table", "largest_radius", "check_norm"]

NORMS = ("l2", "linf")

def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


def largest_radius(results_list: Iterable[Results]) -> float:
    finite = [r.radius[np.isfinite(r.radius)] for r in results_list]
    values = [float(a.max()) for a in finite if a.size]
    return max(values, default=0.0)


def l2_step(rmax: float) -> float:
    """The table's ℓ2 radius step: 0.25, doubled until 0 .. rmax and one more column fit in 12."""
    step = 0.25
    while math.floor(rmax / step) + 2 > 12:
        step *= 2
    return step


def default_radii(results_list: Sequence[Results], norm: str = "l2") -> list[float]:
    """Radii for the summary table's columns, spaced to cover what the runs certify.

    l2: steps of 0.25 from 0 to the first multiple above the largest radius (so the last column
    shows where accuracy has dropped to 0); if that needs more than 12 columns the step grows
    (0.5, 1, 2, ...) rather than cutting off the large radii. linf: the smallest step in
    (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0) giving at most 8 nonzero radii up to the largest.
    """
    check_norm(norm)
    rmax = largest_radius(results_list)
    if norm == "l2":
        step = l2_step(rmax)
        n = math.floor(rmax / step) + 1
    else:
        n = 0
        for step in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0):
            n = math.floor(rmax / step + 1e-9)
            if n <= 8:
                break
        n = min(n, 8)
    return [round(k * step, 10) for k in range(n + 1)]


def _fmt_radius(r: float) -> str:
    return f"{r:.2f}" if abs(round(r, 2) - r) < 1e-12 else f"{r:.4g}"


def _fmt(x: float, spec: str, suffix: str = "") -> str:
    return "n/a" if math.isnan(x) else f"{x:{spec}}{suffix}"


def summary_table(
    results_list: Sequence[Results], labels: Sequence[str], radii: Sequence[float]
) -> str:
    """Markdown table of certified accuracy per radius, ACR, abstain rate and time per example.

    With several runs a strictly best certified accuracy in a radius column, and a strictly best
    ACR, get a ``*``, so the winner is visible; a tie (an all-zero column included) marks nothing.
    """
    if len(labels) != len(results_list):
        raise ValueError(f"{len(results_list)} results but {len(labels)} labels")
    radii = [float(r) for r in radii]
    head = ["run", *(f"r={_fmt_radius(r)}" for r in radii), "ACR", "abstain", "s/example"]
    acc = [[_fmt(a, ".3f") for a in res.certified_accuracy(radii)] for res in results_list]
    acr = [_fmt(res.acr(), ".3f") for res in results_list]

    def mark(column: list[str]) -> list[str]:
        nums = [float(c) for c in column if c != "n/a"]
        if len(results_list) < 2 or not nums:
            return column
        best = max(nums)
        if nums.count(best) > 1:  # no strict winner
            return column
        return [c + "*" if c != "n/a" and float(c) == best else c for c in column]

    for j in range(len(radii)):
        marked = mark([row[j] for row in acc])
        for row, cell in zip(acc, marked):
            row[j] = cell
    acr = mark(acr)

    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for label, res, row, a in zip(labels, results_list, acc, acr):
        cells = [
            str(label).replace("|", "\\|"),
            *row,
            a,
            _fmt(100 * res.abstain_rate(), ".1f", "%"),
            _fmt(res.seconds_per_example(), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TABLE_FORMATS = {".md": "markdown", ".csv": "csv", ".tex": "latex"}
_TEX = {"\\": "\\textbackslash{}", **{c: "\\" + c for c in "&%$#_{}"}, "~": "\\textasciitilde{}"}


def table_as(markdown: str, fmt: str) -> str:
    """A Markdown table of this module (or of the per-class report) as ``csv`` or ``latex``.

    CSV drops the best-value ``*`` so every cell parses as it reads; LaTeX sets the best value in
    bold, escapes TeX's special characters and uses booktabs rules (``\\usepackage{booktabs}``).
    """
    if fmt == "markdown":
        return markdown
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    rows = [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in lines]
    head, align, body = rows[0], rows[1], rows[2:]
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(head)
        writer.writerows([[cell.rstrip("*") for cell in row] for row in body])
        return buffer.getvalue()
    if fmt != "latex":
        raise ValueError(f"unknown table format {fmt!r}")
    columns = "".join("r" if a.endswith(":") else "l" for a in align)

    def tex(cell: str) -> str:
        bold = cell.endswith("*") and len(cell) > 1
        cell = cell.rstrip("*") if bold else cell
        cell = "".join(_TEX.get(char, char) for char in cell)
        return f"\\textbf{{{cell}}}" if bold else cell

    out = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule", " & ".join(map(tex, head)) + " \\\\",
           "\\midrule", *(" & ".join(map(tex, row)) + " \\\\" for row in body), "\\bottomrule",
           "\\end{tabular}"]
    return "\n".join(out) + "\n"
