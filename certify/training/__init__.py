"""The one training loop: data → model → objective → optimizer schedule → a checkpoint every epoch.

The same loop runs data-parallel under ``torchrun`` (``certify.training.distributed``). The names
below are imported on first use, so that the objectives can import the component contract
(:mod:`certify.training.component`) without importing the loop.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AMP_MODES", "TrainConfig", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from certify.training.loop import train

        return train
    if name in ("TrainConfig", "AMP_MODES"):
        from certify.training import config

        return getattr(config, name)
    raise AttributeError(f"module 'certify.training' has no attribute {name!r}")
