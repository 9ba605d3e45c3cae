"""Randomized smoothing: ``Smooth`` (Cohen et al.), ``SequentialSmooth`` and their confidence bounds."""

from certify.smoothing.bounds import gaussian_radius, lower_confidence_bound
from certify.smoothing.core import Smooth
from certify.smoothing.sequential import SequentialSmooth

__all__ = ["SequentialSmooth", "Smooth", "gaussian_radius", "lower_confidence_bound"]
