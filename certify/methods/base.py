"""What a certification method is: the contract between a method module and ``certify run``.

A method turns a loaded checkpoint's model into one row per example (prediction, radius, and any
extra columns it declares). It declares which checkpoint kinds it accepts, its typed options, what
its sidecar records and which of those fields ``--resume`` must find unchanged. The runner and the
CLI only read these declarations, so they name no method.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from certify.checkpoint import Checkpoint
from certify.params import Param, ParamError, resolve

# A method's options are typed parameters; the old names stay for readers of the method modules.
MethodOption = Param
OptionError = ParamError


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


class EpochCheck:
    """Accumulates a certificate-based metric over the test batches of a training epoch."""

    def update(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


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
        return resolve(cls.options, given, owner=f"method {cls.name}")

    @classmethod
    def epoch_check(cls, model: nn.Module, certification: Mapping[str, Any], device: torch.device,
                    seed: int) -> EpochCheck | None:
        """A cheap per-epoch proxy of this kind's certificate, logged while training (None: none)."""
        return None

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
