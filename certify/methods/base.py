"""What a certification method is: the contract between a method module and ``certify run``.

A method turns a loaded checkpoint's model into one row per example (prediction, radius, and any
extra columns it declares). It declares which checkpoint kinds it accepts, its typed options, what
its sidecar records and which of those fields ``--resume`` must find unchanged. The runner and the
CLI only read these declarations, so they name no method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from certify.checkpoint import Checkpoint
from certify.errors import UserError


class OptionError(UserError):
    """A method option has a bad value; ``option`` names it so the CLI can name its flag, and
    ``known`` lists the options the method does have when the option was not one of them."""

    def __init__(self, option: str, message: str, known: tuple[str, ...] | None = None):
        suffix = "" if known is None else f" (its options: {', '.join(known) or 'none'})"
        super().__init__(f"{option}: {message}{suffix}")
        self.option, self.message, self.known = option, message, known


@dataclass(frozen=True)
class MethodOption:
    """One typed option of a method: its name, default, help and the values it accepts.

    ``kind`` is ``int``, ``float``, ``str`` (then ``choices``) or ``"floats"`` (a comma-separated
    list of floats). Numbers must lie in (``above``, ``below``), or from ``at_least`` for ints.
    """

    name: str
    default: Any
    help: str
    kind: Any = float
    choices: tuple[str, ...] = ()
    above: float | None = None
    below: float | None = None
    at_least: int | None = None

    def check(self, value: Any) -> Any:
        """The value converted to the option's type, or ``OptionError`` saying what is allowed."""
        if value is None:
            return None
        if self.kind == "floats":
            return self._floats(value)
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise OptionError(self.name, f"must be an integer, got {value!r}")
            value = int(value)
            if self.at_least is not None and value < self.at_least:
                raise OptionError(self.name, f"must be at least {self.at_least}, got {value}")
            return value
        if self.kind is float:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise OptionError(self.name, f"must be a number, got {value!r}") from None
            if math.isnan(value) or (self.above is not None and value <= self.above) \
                    or (self.below is not None and value >= self.below):
                raise OptionError(self.name, f"must be in {self._range()}, got {value}")
            return value
        if self.choices and value not in self.choices:
            raise OptionError(self.name, f"must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    def _floats(self, value: Any) -> tuple[float, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        try:
            numbers = tuple(float(v) for v in items if str(v).strip())
        except ValueError:
            raise OptionError(self.name, f"expected numbers separated by commas, got {value!r}") \
                from None
        if not numbers or any(not (math.isfinite(v) and v > 0) for v in numbers):
            raise OptionError(self.name, f"expected positive numbers, got {value!r}")
        return tuple(sorted(set(numbers)))

    def _range(self) -> str:
        low = "-∞" if self.above is None else f"{self.above:g}"
        high = "∞" if self.below is None else f"{self.below:g}"
        return f"({low}, {high})"


@dataclass(frozen=True)
class RunContext:
    """What every method gets besides its options: where to run, how big a batch, the run's seed."""

    device: torch.device = torch.device("cpu")
    batch_size: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class Row:
    """One example's certificate; ``extra`` holds the method's own columns, by name."""

    prediction: int
    radius: float
    seconds: float
    extra: Mapping[str, Any] = field(default_factory=dict)


class CertificationMethod:
    """Base class of the registry's methods; subclasses set the class attributes and two methods."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for 'certify run --help'
    kinds: ClassVar[tuple[str, ...]]  # checkpoint certification kinds it accepts
    norm: ClassVar[str]  # "l2" or "linf": the norm of the radius
    options: ClassVar[tuple[MethodOption, ...]] = ()
    resume_keys: ClassVar[tuple[str, ...]] = ()  # sidecar fields that --resume must find unchanged
    columns: ClassVar[tuple[str, ...]] = ()  # TSV columns after the six common ones
    rows_ignore: ClassVar[tuple[str, ...]] = ()  # sidecar settings its rows do not depend on (CPU)

    def __init__(self, ckpt: Checkpoint, model: nn.Module, settings: Mapping[str, Any],
                 context: RunContext):
        self.ckpt, self.model, self.settings, self.context = ckpt, model, dict(settings), context

    @classmethod
    def resolve(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option's value: the given ones checked, the rest at their defaults. Refuses an
        option this method does not have."""
        own = {o.name: o for o in cls.options}
        foreign = sorted(k for k, v in given.items() if v is not None and k not in own)
        if foreign:
            raise OptionError(foreign[0], f"does not apply to method {cls.name}", known=tuple(own))
        return {name: (o.check(given.get(name)) if given.get(name) is not None else o.default)
                for name, o in own.items()}

    def certify_stream(self, examples: Iterable[tuple[int, torch.Tensor]]) -> Iterator[Row]:
        """One row per (index, input) in the order given; may read ahead to batch several inputs."""
        raise NotImplementedError

    def must_match(self) -> tuple[str, ...]:
        """The sidecar fields that --resume must find unchanged for this run."""
        return self.resume_keys

    def describe(self) -> dict[str, Any]:
        """The sidecar fields of this run's settings (must include ``must_match()``)."""
        return {"certifier": self.ckpt.certification.get("kind"), "method": self.name,
                "norm": self.norm, **self.settings}

    def totals(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Sidecar fields computed from the finished file's extra columns (summed again by merge)."""
        return {}


def example_seed(seed: int, idx: int) -> int:
    """A 63-bit seed from (run seed, example index): each example's noise is fixed by the pair alone,
    so resumed, sharded and uninterrupted runs draw the same noise for the same example."""
    state = np.random.SeedSequence([seed, idx]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def example_generator(context: RunContext, idx: int) -> torch.Generator:
    """The generator of example ``idx``'s noise, on the run's device."""
    return torch.Generator(device=context.device).manual_seed(example_seed(context.seed, idx))
