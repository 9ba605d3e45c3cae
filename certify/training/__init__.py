"""The one training loop: data → model → objective → SGD schedule → a checkpoint every epoch."""

from certify.training.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
