"""Running a base classifier fast when it is evaluated on thousands of noisy copies of each image.

Certification evaluates one fixed network on batches of one fixed shape, over and over: the case
that channels_last convolutions and ``torch.compile`` (with CUDA graphs) are made for. Neither changes
what is computed, only how, so outputs match the plain model's up to floating-point rounding; a
certificate stays a certificate of the network as run.

Measured on an NVIDIA H200 with cifar_resnet110 at N = 100,000 (results/gpu/2026-11-27-h200): bf16 +
channels_last 1.76× the reference loop, bf16 + ``torch.compile(mode="reduce-overhead")`` 2.60×, fp32
as is 1.02×.
"""

from __future__ import annotations

import torch
from torch import nn

from certify.errors import UserError, first_line

# "off" first: the default. reduce-overhead adds CUDA graphs on a GPU; the max-autotune modes
# search kernels for minutes on a ResNet-110.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


class ChannelsLast(nn.Module):
    """Runs a channels_last ``model`` on inputs converted to channels_last (4-d inputs only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class Compiled(nn.Module):
    """``torch.compile(model)``, whose first call (where compilation happens) turns a failure of the
    compiler (no C++ compiler for inductor on a CPU, say) into a one-line UserError."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        self.compiled = torch.compile(model, mode=mode, dynamic=False)
        self.mode = mode
        self.working = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.working:
            return self.compiled(x)
        try:
            out = self.compiled(x)
        except Exception as error:  # noqa: BLE001 - any compiler failure: the user can run without it
            raise UserError(f"--compile {self.mode}: torch.compile failed ({first_line(error)}); "
                            f"run without --compile") from error
        self.working = True
        return out


def fast_classifier(model: nn.Module, *, channels_last: bool = False, compile_mode: str = "off") -> nn.Module:
    """``model`` in eval mode, in channels_last memory format if asked, under ``torch.compile`` unless
    ``compile_mode`` is ``"off"``. Converts ``model`` in place (no copy: the caller owns it).

    A compiled classifier is compiled for each batch shape it meets (``dynamic=False``, which CUDA
    graphs need): give it full batches only (``Smooth(..., static_batch=True)``)."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    model = model.eval()
    if channels_last:
        model = ChannelsLast(model.to(memory_format=torch.channels_last))
    if compile_mode != "off":
        model = Compiled(model, compile_mode)
    return model
