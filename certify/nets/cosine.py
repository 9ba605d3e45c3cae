"""The cosine classifier head that LDAM trains with (Cao et al. 2019; ``NormedLinear`` in
kaidic/LDAM-DRW): logits are cosines between the feature and each class weight, so they lie in
[-1, 1] and LDAM's margins (≤ max_m = 0.5) and scale s = 30 have their intended size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NormedLinear", "classifier_head", "use_cosine_head"]


class NormedLinear(nn.Module):
    """``normalize(x) @ normalize(W)ᵀ``: a bias-free linear layer on unit vectors.

    The weight is stored (out, in) like ``nn.Linear``'s (the reference stores it transposed), so
    code that reads a head's weight rows works for both. The init is the reference's: uniform on
    [-1, 1], then each class vector rescaled to norm 1 (``reset_parameters``).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's ``weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`` on its
        (in, out) weight: the same draws from the global generator, in the same order, and every
        class vector (a column there, a row here) of norm 1 (up to renorm's 1e-7 in the divisor)."""
        reference = torch.empty(self.in_features, self.out_features, device=self.weight.device,
                                dtype=self.weight.dtype)
        reference.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.weight.copy_(reference.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def classifier_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear | NormedLinear]:
    """(parent, attribute, head): the last ``nn.Linear`` or ``NormedLinear`` in ``model``, which
    maps the penultimate features to the logits in every non-ℓ∞ architecture here."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, NormedLinear)):
            found = name
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear classifier head")
    parent_name, _, attr = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def use_cosine_head(model: nn.Module) -> nn.Module:
    """Replace the model's final linear layer by a :class:`NormedLinear` of the same shape."""
    parent, attr, head = classifier_head(model)
    setattr(parent, attr, NormedLinear(head.in_features, head.out_features))
    return model
