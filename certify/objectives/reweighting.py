"""Per-class loss weights for long-tailed training, and the schedule that switches them on.

Rules (docs/long_tail_noisy.md#class-weights, #ldam-drw, #cdb-w-and-cdb-s):

- ``cb``: class-balanced effective-number weights from the first epoch (LDAM's "Reweight").
- ``drw``: the same weights deferred to ``drw_epoch`` (0-based; LDAM-DRW: 160 of 200); before it
  every weight is 1.
- ``cdb``: CDB-W, w_c = d_c^τ from the per-class difficulty d_c = 1 − accuracy on a balanced
  validation split, refreshed after every epoch; d starts at 1, so the first epoch is plain CE.

How the weighted losses are averaged follows each reference: cb/drw as ``F.cross_entropy(weight=)``
(Σ w ℓ / Σ w), cdb as the CIFAR code's plain mean of w·ℓ; ``reduction`` overrides it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from certify.losses.long_tail import CB_BETA, cdb_tau, cdb_weights, class_balanced_weights

__all__ = ["ClassReweighting", "class_difficulty", "REWEIGHT_RULES"]

REWEIGHT_RULES = ("none", "cb", "drw", "cdb")
REDUCTIONS = ("auto", "weighted", "mean")


@torch.no_grad()
def class_difficulty(model: nn.Module, dataset: Any, num_classes: int, device: torch.device,
                     batch_size: int = 1000) -> Tensor:
    """d_c = 1 − accuracy of ``model`` on class c's examples of ``dataset`` (1 for a class with none)."""
    was_training = model.training
    model.eval()
    hits = torch.zeros(num_classes, dtype=torch.float64)
    seen = torch.zeros(num_classes, dtype=torch.float64)
    for x, y in DataLoader(dataset, batch_size=batch_size):
        y = torch.as_tensor(y)
        correct = (model(x.to(device)).argmax(1).cpu() == y).double()
        hits.index_add_(0, y, correct)
        seen.index_add_(0, y, torch.ones_like(correct))
    model.train(was_training)
    accuracy = torch.where(seen > 0, hits / seen.clamp(min=1), torch.zeros_like(hits))
    return (1.0 - accuracy).float()


class ClassReweighting:
    """The current per-class weights (None: unweighted) under one of :data:`REWEIGHT_RULES`."""

    def __init__(self, rule: str = "none", beta: float = CB_BETA, drw_epoch: int = 160,
                 tau: str | float = "dynamic", floor: float = 0.0, reduction: str = "auto"):
        if rule not in REWEIGHT_RULES:
            raise ValueError(f"reweight must be one of {', '.join(REWEIGHT_RULES)}, got {rule!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"weight_reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"cb_beta must be in [0, 1), got {beta}")
        self.rule, self.beta, self.drw_epoch = rule, float(beta), int(drw_epoch)
        self.tau, self.floor = tau, float(floor)
        self.reduction = reduction if reduction != "auto" else ("mean" if rule == "cdb" else "weighted")
        self.counts: Tensor | None = None
        self.difficulty: Tensor | None = None
        self.current: Tensor | None = None

    def set_class_counts(self, counts: Tensor) -> None:
        self.counts = counts
        if self.rule == "cdb" and self.difficulty is None:
            self.difficulty = torch.ones(len(counts))

    def start_epoch(self, epoch: int) -> None:
        if self.rule == "none":
            self.current = None
        elif self.rule == "cdb":
            d = self.difficulty
            assert d is not None  # set at set_class_counts (or load_state_dict)
            self.current = cdb_weights(d, cdb_tau(d, self.tau), self.floor)
        elif self.rule == "cb" or epoch >= self.drw_epoch:
            assert self.counts is not None  # set_class_counts comes first
            self.current = class_balanced_weights(self.counts, self.beta)
        else:
            self.current = None

    @property
    def needs_validation(self) -> bool:
        return self.rule == "cdb"

    def update(self, difficulty: Tensor) -> None:
        """CDB: the difficulty measured on the validation split after an epoch."""
        self.difficulty = difficulty.float().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"difficulty": None if self.difficulty is None else self.difficulty.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("difficulty") is not None:
            self.difficulty = torch.tensor(state["difficulty"])

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"reweight": self.rule}
        if self.rule in ("cb", "drw"):
            params["cb_beta"] = self.beta
        if self.rule == "drw":
            params["drw_epoch"] = self.drw_epoch
        if self.rule == "cdb":
            params |= {"cdb_tau": self.tau, "cdb_floor": self.floor}
        if self.rule != "none":
            params["weight_reduction"] = self.reduction
        return params
