"""The one training loop: data → model → objective → SGD schedule → a checkpoint every epoch.

The same loop runs data-parallel under ``torchrun`` (``certify.training.distributed``).
"""

from certify.training.loop import AMP_MODES, TrainConfig, train

__all__ = ["AMP_MODES", "TrainConfig", "train"]
