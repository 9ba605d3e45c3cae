"""Strict JSON for every file the toolkit writes: NaN and ±inf become ``null``.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which is not JSON (RFC 8259): strict
parsers (JavaScript's ``JSON.parse``, ``jq``, most other languages) refuse the whole file. A metric
that is undefined (an empty group, a diverged model) is therefore written as ``null``, and
``allow_nan=False`` makes any non-finite number that slipped through an error instead of a bad file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["finite_or_none", "strict_dumps"]


def _plain(obj: Any) -> Any:
    """NumPy values and paths as plain Python; anything else unchanged."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside dicts, lists, tuples and NumPy arrays)
    replaced by None; other values unchanged (tuples become lists, as JSON writes them)."""
    obj = _plain(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def strict_dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """``json.dumps`` of ``obj`` with non-finite numbers written as ``null`` (strict JSON)."""
    import json

    return json.dumps(finite_or_none(obj), allow_nan=False, default=default, **kwargs)
