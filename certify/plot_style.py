"""How the toolkit's figures look: size, font, legend place, and a colour and line style per run
that stay distinct beyond ten runs. No matplotlib here, so the CLI can offer the choices at once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from certify.errors import UserError

_LINESTYLES = ("-", "--", ":", "-.")  # after the 10 colours, the next runs change style too
LEGEND_PLACES = ("best", "upper right", "lower left", "outside", "none")


@dataclass(frozen=True)
class FigureStyle:
    """How a figure looks: its size in inches, its font size, where its legend goes ("outside":
    right of the axes, so it never covers a curve; "none": no legend)."""

    figsize: tuple[float, float] = (6.4, 4.4)
    font_size: float = 10.0
    legend: str = "upper right"

    def __post_init__(self) -> None:
        if not (len(self.figsize) == 2 and all(math.isfinite(v) and v > 0 for v in self.figsize)):
            raise UserError(f"figure size must be two positive numbers (inches), got {self.figsize}")
        if not self.font_size > 0:
            raise UserError(f"font size must be positive, got {self.font_size}")
        if self.legend not in LEGEND_PLACES:
            raise UserError(f"legend must be one of {', '.join(LEGEND_PLACES)}, got {self.legend!r}")


DEFAULT_STYLE = FigureStyle()


def line_style(k: int) -> dict[str, Any]:
    """Run k's colour and line style: distinct for 40 runs (10 colours × 4 styles)."""
    return {"color": f"C{k % 10}", "linestyle": _LINESTYLES[(k // 10) % len(_LINESTYLES)]}
