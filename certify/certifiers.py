"""Certifiers: what turns a loaded checkpoint into per-example (prediction, radius) rows.

A checkpoint records its certification kind ("smoothing" or "linf_dist");
``make_certifier`` looks the kind up here, so ``certify run`` needs no flags the checkpoint knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from certify.checkpoint import Checkpoint
from certify.errors import UserError


class Certifier(Protocol):
    """Certifies one example at a time; ``describe()`` goes into the results sidecar."""

    norm: str  # "l2" or "linf": the norm of the radius

    def certify(self, x: torch.Tensor, idx: int) -> tuple[int, float]: ...

    # Optional: certifiers that work on whole batches also define
    # ``certify_batch(x: Tensor, idx: list[int]) -> list[tuple[int, float]]``; the runner prefers it.

    def describe(self) -> dict[str, Any]: ...


@dataclass
class CertifyOptions:
    """Options of ``certify run`` that a certifier may use (each kind ignores what it does not need)."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    precision: str = "fp32"
    device: torch.device = torch.device("cpu")
    bound: str = "auto"  # ℓ∞-dist nets: "lipschitz", "interval" or "auto" (the net's natural one)


CertifierFactory = Callable[[Checkpoint, nn.Module, CertifyOptions], Certifier]
_FACTORIES: dict[str, CertifierFactory] = {}


def register_certifier(kind: str, factory: CertifierFactory) -> None:
    _FACTORIES[kind] = factory


def make_certifier(ckpt: Checkpoint, model: nn.Module, options: CertifyOptions) -> Certifier:
    kind = ckpt.certification.get("kind")
    if kind == "none":
        raise UserError(f"{ckpt.path} was trained without a certificate (objective "
                        f"{ckpt.training.get('config', {}).get('objective', '?')}): "
                        f"'certify eval' reports its accuracy and calibration")
    if kind not in _FACTORIES:
        raise UserError(f"{ckpt.path}: no certifier for kind {kind!r}; known kinds: "
                        f"{', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[kind](ckpt, model, options)


def example_seed(seed: int, idx: int) -> int:
    """A 63-bit seed from (run seed, example index): each example's noise is fixed by the pair alone,
    so resumed, sharded and uninterrupted runs draw the same noise for the same example."""
    state = np.random.SeedSequence([seed, idx]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _smoothing_factory(ckpt: Checkpoint, model: nn.Module, options: CertifyOptions) -> Certifier:
    from certify.smoothing.certifier import SmoothingCertifier

    return SmoothingCertifier(model, ckpt.num_classes, float(ckpt.certification["sigma"]), options)


def _linf_dist_factory(ckpt: Checkpoint, model: nn.Module, options: CertifyOptions) -> Certifier:
    from certify.linf_dist.certifier import LinfDistCertifier

    return LinfDistCertifier(model, options, bound=options.bound)


register_certifier("smoothing", _smoothing_factory)
register_certifier("linf_dist", _linf_dist_factory)
