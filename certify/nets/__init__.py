"""Architecture registry: a name → a builder, and every model starts with its NormalizeLayer.

``build_model("lenet", num_classes=10, input_shape=(1, 28, 28), mean=(0.,), std=(1.,))`` returns
``nn.Sequential(NormalizeLayer, LeNet)``, the layout of the smoothing references, so their state dicts
(keys ``1.conv1.weight``...) load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from certify.data.registry import DatasetInfo
from certify.errors import UserError
from certify.nets.cifar_resnet import CifarResNet
from certify.nets.cosine import NormedLinear, use_cosine_head
from certify.nets.lenet import LeNet
from certify.nets.normalize import NormalizeLayer
from certify.nets.small_cnn import SmallCNN

__all__ = ["NormalizeLayer", "NormedLinear", "ArchSpec", "register_architecture", "available_architectures",
           "build_model", "model_normalization"]

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture, and which inputs it accepts."""

    build: Callable[..., nn.Module]  # (num_classes, input_shape, **kwargs) -> nn.Module
    summary: str
    accepts: Callable[[tuple[int, ...]], bool] = lambda shape: True
    accepts_text: str = "any input shape"
    # (mean, std) this architecture trains with on a dataset; None: the dataset's own statistics.
    normalization: Callable[[DatasetInfo], tuple[tuple[float, ...], tuple[float, ...]]] | None = None
    scalar_std: bool = False  # one std for all channels (ℓ∞ models: an ℓ∞ ball must stay a ball)


_REGISTRY: dict[str, ArchSpec] = {}


def _build_options(spec: ArchSpec) -> list[str] | None:
    """The keyword options ``spec.build`` takes after (num_classes, input_shape); None if it takes
    any (``**kwargs``), so only the build itself can tell."""
    import inspect

    params = list(inspect.signature(spec.build).parameters.values())[2:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def register_architecture(name: str, spec: ArchSpec) -> None:
    """Add an architecture; later issues register theirs (e.g. ℓ∞-dist nets) the same way."""
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is already registered")
    _REGISTRY[name] = spec


def available_architectures() -> list[str]:
    return sorted(_REGISTRY)


def architecture_spec(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown architecture {name!r}; choose one of: "
                        f"{', '.join(available_architectures())}") from None


def model_normalization(arch: str, info: DatasetInfo) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a new ``arch`` model for dataset ``info`` starts with (its first layer)."""
    spec = architecture_spec(arch)
    return spec.normalization(info) if spec.normalization is not None else (info.mean, info.std)


def build_model(arch: str, *, num_classes: int, input_shape: Sequence[int], mean: Sequence[float],
                std: Sequence[float], **kwargs: Any) -> nn.Sequential:
    """Build ``NormalizeLayer(mean, std)`` followed by the named network (random weights)."""
    spec = architecture_spec(arch)
    shape = tuple(int(s) for s in input_shape)
    if not spec.accepts(shape):
        raise UserError(f"architecture {arch!r} needs {spec.accepts_text}, but the data is "
                        f"{'×'.join(map(str, shape))}")
    if len(mean) != shape[0]:
        raise UserError(f"normalization has {len(mean)} channels but inputs have {shape[0]}")
    if spec.scalar_std and len(set(std)) != 1:
        raise UserError(f"architecture {arch!r} needs one std for all channels, got {list(std)}")
    cosine = bool(kwargs.pop("cosine_head", False))
    if cosine and spec.scalar_std:
        raise UserError(f"architecture {arch!r} has no linear head to make a cosine classifier")
    known = _build_options(spec)
    unknown = sorted(set(kwargs) - set(known)) if known is not None else []
    if unknown:
        raise UserError(f"architecture {arch!r} has no option {', '.join(unknown)} (--arch-opt); its "
                        f"options: {', '.join(known or []) or 'none'}")
    try:
        net = spec.build(num_classes, shape, **kwargs)
    except TypeError as err:
        raise UserError(f"bad options for architecture {arch!r}: {err}") from None
    if cosine:  # LDAM's normalized head (any architecture ending in a linear layer)
        use_cosine_head(net)
    return nn.Sequential(NormalizeLayer(mean, std), net)


register_architecture("lenet", ArchSpec(
    build=lambda k, shape: LeNet(num_classes=k, in_channels=shape[0]),
    summary="LeNet of the SmoothMix MNIST experiments (conv20-conv50-fc500)",
    accepts=lambda shape: shape[1:] == (28, 28), accepts_text="28×28 inputs"))
register_architecture("small_cnn", ArchSpec(
    build=lambda k, shape, width=16, hidden=128: SmallCNN(k, shape[0], shape[1], width, hidden),
    summary="small 2-conv CNN for short CPU budgets (options: width, hidden)",
    accepts=lambda shape: shape[1] == shape[2] and shape[1] % 4 == 0,
    accepts_text="square inputs with a side divisible by 4"))
for _depth in (20, 110):
    register_architecture(f"cifar_resnet{_depth}", ArchSpec(
        build=lambda k, shape, depth=_depth: CifarResNet(depth=depth, num_classes=k,
                                                        in_channels=shape[0]),
        summary=f"CIFAR ResNet-{_depth} of the smoothing references (widths 16/32/64)"))
register_architecture("cifar_resnet32", ArchSpec(
    build=lambda k, shape: CifarResNet(depth=32, num_classes=k, in_channels=shape[0], shortcut="A",
                                       init="fan_in"),
    summary="CIFAR ResNet-32 of the long-tailed references (LDAM-DRW's resnet32: option-A "
            "shortcuts, 0.46 M parameters)"))


def _resnet50(num_classes: int, shape: Shape) -> nn.Module:
    """torchvision's ResNet-50, the ImageNet network of Cohen et al. and SmoothMix (their
    architectures.py wraps it in DataParallel; checkpoint loading drops that "module." level)."""
    from torchvision.models import resnet50  # imported here: torchvision is slow to import

    return resnet50(weights=None, num_classes=num_classes)


register_architecture("resnet50", ArchSpec(
    build=_resnet50,
    summary="ResNet-50 (torchvision) of the ImageNet smoothing references, 25.6 M parameters",
    accepts=lambda shape: shape[0] == 3, accepts_text="3-channel (RGB) inputs"))


def _register_linf_dist() -> None:
    from certify.linf_dist.nets import LinfDistHybrid, LinfDistNet, linf_normalization

    register_architecture("linf_dist_net", ArchSpec(
        build=lambda k, shape, **kw: LinfDistNet(shape, k, **kw),
        summary="ℓ∞-distance net (options: depth=5, width=5120, scalar=0|1 for the v2 logit scale)",
        normalization=linf_normalization, scalar_std=True))
    register_architecture("linf_dist_hybrid", ArchSpec(
        build=lambda k, shape, **kw: LinfDistHybrid(shape, k, **kw),
        summary="ℓ∞-distance net + MLP head certified by interval bounds "
                "(options: dist_depth=5, width=5120, hidden=512)",
        normalization=linf_normalization, scalar_std=True))


_register_linf_dist()
