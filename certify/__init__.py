"""certify: train robust image classifiers and prove how robust they are."""

__version__ = "0.1.0"
