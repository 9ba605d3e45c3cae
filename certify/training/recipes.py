"""Recipes: published training settings kept as data (``certify/recipes/*.toml``), not code.

A recipe has a description, its source (paper, docs section), a ``[config]`` table of
:class:`~certify.training.TrainConfig` options and an ``[objective]`` table of objective options.
``certify train --recipe NAME`` fills in every option the user did not type.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certify.errors import UserError
from certify.training.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Recipe", "available_recipes", "load_recipe", "recipe_dir"]


@dataclass
class Recipe:
    """A named training setting: where it comes from, TrainConfig fields and objective arguments."""

    name: str
    description: str
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)


def recipe_dir() -> Any:
    """The packaged recipes (a Traversable: works from a wheel as well as from a checkout)."""
    from importlib.resources import files

    return files("certify") / "recipes"


def available_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in recipe_dir().iterdir() if p.name.endswith(".toml"))


def load_recipe(name: str) -> Recipe:
    """The packaged recipe NAME, or a TOML file of the same shape; a typo lists the known names."""
    path = Path(name)
    if name.endswith(".toml") and path.is_file():
        text, label = path.read_text(encoding="utf-8"), path.stem
    else:
        resource = recipe_dir() / f"{name}.toml"
        if not resource.is_file():
            raise UserError(f"unknown recipe {name!r}; available: {', '.join(available_recipes())} "
                            f"(see 'certify train --list-recipes')")
        text, label = resource.read_text(encoding="utf-8"), name
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"recipe {name}: not valid TOML ({err})") from None
    config_fields = set(TrainConfig.option_names())
    unknown = [f"config.{key}" for key in raw.get("config", {}) if key not in config_fields]
    unknown += [key for key in raw if key not in ("description", "source", "config", "objective")]
    if unknown:
        raise UserError(f"recipe {name}: unknown keys {', '.join(unknown)}")
    return Recipe(name=label, description=str(raw.get("description", "")),
                  source=str(raw.get("source", "")), config=dict(raw.get("config", {})),
                  objective=dict(raw.get("objective", {})))
