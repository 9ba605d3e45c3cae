"""Randomized smoothing: the ``Smooth`` classifier and its confidence bounds."""

from certify.smoothing.bounds import gaussian_radius, lower_confidence_bound
from certify.smoothing.core import Smooth

__all__ = ["Smooth", "gaussian_radius", "lower_confidence_bound"]
