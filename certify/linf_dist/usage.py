"""Which ``lp_dist`` backend actually computed: every backend counts its calls here.

``ops`` picks a backend per call, and the compiled CPU backend itself falls back to the eager code
when a kernel cannot be compiled (with one warning per process). The counts say what really ran,
so a training run can record it per epoch (the ℓ∞ objectives' ``lp_dist_backend`` metric) and a
test can fail when the compiled path silently went eager.
"""

from __future__ import annotations

import threading
from collections import Counter

BACKEND_NAMES = ("compiled", "native", "eager", "triton")

_counts: Counter[str] = Counter()
_lock = threading.Lock()


def record(backend: str) -> None:
    """One forward or backward computation ran on ``backend`` (one of ``BACKEND_NAMES``)."""
    with _lock:
        _counts[backend] += 1


def counts(reset: bool = False) -> dict[str, int]:
    """Calls per backend since the last reset (``reset=True``: start counting afresh)."""
    with _lock:
        now = dict(_counts)
        if reset:
            _counts.clear()
    return now


def summary(used: dict[str, int]) -> str:
    """'compiled', 'native', 'eager', 'triton', several joined by '+' (most calls first), or 'none'."""
    names = sorted((name for name, n in used.items() if n), key=lambda name: (-used[name], name))
    return "+".join(names) or "none"
