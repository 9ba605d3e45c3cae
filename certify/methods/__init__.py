"""The registry of certification methods: ``certify run --method NAME`` looks the name up here.

Adding a method is one module that subclasses ``CertificationMethod`` and one line in ``METHODS``.
The first method listed for a checkpoint kind is that kind's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from certify.checkpoint import Checkpoint
from certify.errors import UserError
from certify.methods.base import (
    CertificationMethod,
    EpochCheck,
    MethodOption,
    OptionError,
    Row,
    RunContext,
    example_generator,
    example_seed,
)
from certify.methods.cohen import Cohen
from certify.methods.linf_bounds import LinfBounds
from certify.methods.predict import Predict
from certify.methods.sequential import Sequential

METHODS: dict[str, type[CertificationMethod]] = {m.name: m for m in (Cohen, Sequential, LinfBounds, Predict)}

__all__ = ["METHODS", "CertificationMethod", "MethodOption", "OptionError", "Row", "RunContext",
           "all_options", "default_method", "epoch_check", "example_generator", "example_seed", "make_method",
           "method_for"]


def default_method(kind: str | None) -> type[CertificationMethod]:
    """The method a checkpoint of this certification kind gets when none is named."""
    for method in METHODS.values():
        if kind in method.kinds:
            return method
    raise UserError(f"no certification method for checkpoints of kind {kind!r}; known kinds: "
                    f"{', '.join(sorted({k for m in METHODS.values() for k in m.kinds}))}")


def method_for(ckpt: Checkpoint, name: str | None = None) -> type[CertificationMethod]:
    """The method named (or the kind's default), after checking that it accepts this checkpoint."""
    kind = ckpt.certification.get("kind")
    if kind == "none":
        raise UserError(f"{ckpt.path} was trained without a certificate (objective "
                        f"{ckpt.training.get('config', {}).get('objective', '?')}): "
                        f"'certify eval' reports its accuracy and calibration; --sigma S certifies its "
                        f"smoothed classifier (the undefended baseline)")
    if name is None:
        return default_method(kind)
    if name not in METHODS:
        raise UserError(f"unknown certification method {name!r}; known: {', '.join(METHODS)}")
    method = METHODS[name]
    if kind not in method.kinds:
        fits = [m.name for m in METHODS.values() if kind in m.kinds]
        raise UserError(f"method {name} certifies {' or '.join(method.kinds)} checkpoints, and "
                        f"{ckpt.path} is {kind}: use {' or '.join(fits) or 'another checkpoint'}")
    return method


def make_method(ckpt: Checkpoint, model: nn.Module, name: str | None, given: Mapping[str, Any],
                context: RunContext) -> CertificationMethod:
    """The method ready to certify: options checked (unset ones at their defaults)."""
    method = method_for(ckpt, name)
    return method(ckpt, model, method.resolve(given), context)


def epoch_check(model: nn.Module, certification: Mapping[str, Any], device: torch.device,
                seed: int) -> EpochCheck | None:
    """The per-epoch training metric of a certificate (its kind's default method provides it)."""
    kind = certification.get("kind")
    if kind == "none":
        return None
    return default_method(kind).epoch_check(model, certification, device, seed)


def all_options() -> dict[str, tuple[MethodOption, list[str]]]:
    """Every option of every method, once, with the methods that have it (shared options must be
    declared identically, which a test checks)."""
    options: dict[str, tuple[MethodOption, list[str]]] = {}
    for method in METHODS.values():
        for option in method.options:
            options.setdefault(option.name, (option, []))[1].append(method.name)
    return options
