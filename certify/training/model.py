"""The model as settings: the architecture, its options and its memory layout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from certify.params import Param

MODEL_OPTIONS: tuple[Param, ...] = (
    Param("arch", "lenet", "lenet (28×28), small_cnn, cifar_resnet20, cifar_resnet32, cifar_resnet110, "
          "linf_dist_net, linf_dist_hybrid.", kind=str),
    Param("arch_kwargs", {}, "Architecture option, e.g. --arch-opt width=8 for small_cnn.",
          kind=dict, flag="arch_opt", metavar="KEY=VALUE"),
    Param("channels_last", False, "Keep the model and its inputs in channels_last (NHWC) memory "
          "format (faster convolutions on GPUs).", kind=bool),
)


def build_training_model(settings: Any, info: Any, device: torch.device) -> nn.Module:
    """The architecture with the dataset's normalization inside, on ``device``."""
    from certify.nets import build_model, model_normalization

    mean, std = model_normalization(settings.arch, info)
    model = build_model(settings.arch, num_classes=info.num_classes, input_shape=info.input_shape,
                        mean=mean, std=std, **settings.arch_kwargs).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
