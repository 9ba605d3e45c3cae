"""Typed parameters: each setting is declared once, and everything else is generated from it.

A :class:`Param` holds a setting's name, type, default, allowed values, help and the reference it
follows. Certification methods and training components declare a tuple of them; the CLI builds its
click options from those tuples, recipes and checkpoints are checked against them, and
:func:`resolve` validates a mapping of values. The library's errors name parameters
(:class:`ParamError`); only the CLI turns a parameter name into its ``--flag``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from certify.errors import UserError

__all__ = ["Param", "ParamError", "resolve", "by_name"]


class ParamError(UserError):
    """A parameter has a bad value; ``param`` names it (the CLI shows its flag), and ``known`` lists
    the parameters that do exist when the name was not one of them."""

    def __init__(self, param: str, message: str, known: tuple[str, ...] | None = None):
        suffix = "" if known is None else f" (its options: {', '.join(known) or 'none'})"
        super().__init__(f"{param}: {message}{suffix}")
        self.param, self.message, self.known = param, message, known

    @property
    def option(self) -> str:  # the name certification methods use
        return self.param


@dataclass(frozen=True)
class Param:
    """One typed setting.

    ``kind`` is ``int``, ``float``, ``str`` (then ``choices`` if the set is closed), ``bool``,
    ``dict`` (KEY=VALUE pairs), ``"floats"`` (a comma-separated list of positive floats) or
    ``"float|str"`` (a number or one of ``choices``). Numbers
    must lie above ``above`` and below ``below`` (open bounds) and within ``at_least`` ..
    ``at_most`` (closed bounds). A ``None`` default means "chosen elsewhere" (the help says by what).
    ``flag`` overrides the CLI flag's name; ``reference`` says whose default or rule this is.
    """

    name: str
    default: Any
    help: str
    kind: Any = float
    choices: tuple[str, ...] = ()
    above: float | None = None
    below: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()  # older or reference spellings the CLI also accepts
    metavar: str | None = None
    reference: str = ""

    @property
    def cli_flag(self) -> str:
        return "--" + (self.flag or self.name).replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value converted to the parameter's type, or ``ParamError`` saying what is allowed."""
        if value is None:
            return None
        if self.kind == "floats":
            return self._floats(value)
        if self.kind == "float|str":  # a number, or one of the named rules in ``choices``
            if isinstance(value, str) and value in self.choices:
                return value
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ParamError(self.name, f"must be a number or one of {', '.join(self.choices)}, "
                                            f"got {value!r}") from None
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise ParamError(self.name, f"must be true or false, got {value!r}")
            return bool(value)
        if self.kind is dict:
            if not isinstance(value, Mapping):
                raise ParamError(self.name, f"must be a table of KEY = VALUE, got {value!r}")
            return dict(value)
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ParamError(self.name, f"must be an integer, got {value!r}")
            return self._in_range(int(value))
        if self.kind is float:
            if isinstance(value, bool):
                raise ParamError(self.name, f"must be a number, got {value!r}")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ParamError(self.name, f"must be a number, got {value!r}") from None
            if math.isnan(number):
                raise ParamError(self.name, f"must be a number, got {value!r}")
            return self._in_range(number)
        if not isinstance(value, str):
            raise ParamError(self.name, f"must be a string, got {value!r}")
        if self.choices and value not in self.choices:
            raise ParamError(self.name, f"must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    def _in_range(self, value: float) -> Any:
        if (self.above is not None and not value > self.above) \
                or (self.below is not None and not value < self.below) \
                or (self.at_least is not None and value < self.at_least) \
                or (self.at_most is not None and value > self.at_most):
            raise ParamError(self.name, f"must be {self.range_text()}, got {value}")
        return value

    def range_text(self) -> str:
        """'at least 1', 'in (0, 1]', ...: the allowed interval in words."""
        if self.at_least is not None and (self.at_most, self.above, self.below) == (None,) * 3:
            return f"at least {self.at_least:g}"
        low = f"[{self.at_least:g}" if self.at_least is not None else (
            "(-∞" if self.above is None else f"({self.above:g}")
        high = f"{self.at_most:g}]" if self.at_most is not None else (
            "∞)" if self.below is None else f"{self.below:g})")
        return f"in {low}, {high}"

    def _floats(self, value: Any) -> tuple[float, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        try:
            numbers = tuple(float(v) for v in items if str(v).strip())
        except ValueError:
            raise ParamError(self.name, f"expected numbers separated by commas, got {value!r}") \
                from None
        if not numbers or any(not (math.isfinite(v) and v > 0) for v in numbers):
            raise ParamError(self.name, f"expected positive numbers, got {value!r}")
        return tuple(sorted(set(numbers)))


def by_name(params: Iterable[Param]) -> dict[str, Param]:
    return {p.name: p for p in params}


def resolve(params: Sequence[Param], given: Mapping[str, Any], *, owner: str,
            defaults: bool = True) -> dict[str, Any]:
    """Every parameter's value: the given ones checked, the rest at their defaults (or left out
    with ``defaults=False``). A name that is not a parameter of ``owner`` is refused."""
    own = by_name(params)
    foreign = sorted(k for k, v in given.items() if v is not None and k not in own)
    if foreign:
        raise ParamError(foreign[0], f"does not apply to {owner}", known=tuple(own))
    values = {name: p.check(given[name]) for name, p in own.items() if given.get(name) is not None}
    if defaults:
        values = {name: values.get(name, p.default) for name, p in own.items()}
    return values
