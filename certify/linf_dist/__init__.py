"""ℓ∞-distance nets (Zhang et al. 2021, 2022): the ℓp-distance op, layers, nets and bounds."""

from certify.linf_dist.ops import lp_dist

__all__ = ["lp_dist"]
