"""Training objectives, by name: ``certify train --objective NAME`` looks the name up here.

Adding an objective is one module that subclasses :class:`~certify.objectives.base.Objective`
(its loss, its certificate, its typed options and the hooks it needs) and one entry in
``OBJECTIVES``; the CLI flags, recipe keys and checks are generated from its options.
"""

from __future__ import annotations

from typing import Any

from certify.errors import UserError
from certify.objectives.base import Objective
from certify.objectives.classify import Classify
from certify.objectives.gaussian import GaussianAugmentation
from certify.objectives.linf_margin import LinfHinge, LinfHybridCE, LinfMixture
from certify.objectives.smoothmix import SmoothMix
from certify.params import Param, resolve

__all__ = ["OBJECTIVES", "Objective", "make_objective", "available_objectives", "all_options",
           "Classify", "GaussianAugmentation", "SmoothMix", "LinfMixture", "LinfHinge", "LinfHybridCE"]

OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (
    Classify, GaussianAugmentation, SmoothMix, LinfMixture, LinfHinge, LinfHybridCE)}


def available_objectives() -> list[str]:
    return sorted(OBJECTIVES)


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; choose one of: {', '.join(available_objectives())}")
    return OBJECTIVES[name]


def make_objective(name: str, **params: Any) -> Objective:
    """The objective NAME with ``params`` checked against its options (None: the default)."""
    objective = objective_class(name)
    return objective(**resolve(objective.options, params, owner=f"objective {name}", defaults=False))


def all_options() -> dict[str, tuple[Param, list[str]]]:
    """Every option of every objective, once, with the objectives that have it (shared options are
    the same ``Param`` object, which a test checks)."""
    options: dict[str, tuple[Param, list[str]]] = {}
    for objective in OBJECTIVES.values():
        for option in objective.options:
            options.setdefault(option.name, (option, []))[1].append(objective.name)
    return options
