"""The statistics of a smoothing certificate: Clopper-Pearson lower bound → ℓ2 radius."""

from __future__ import annotations


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper-Pearson lower bound on a binomial proportion from n_a of n.

    statsmodels has no one-sided option in the versions people have, so, as the reference does, take
    the lower end of the two-sided interval at level 2α; that equals ``beta.ppf(α, n_a, n − n_a + 1)``.
    """
    from statsmodels.stats.proportion import proportion_confint  # slow import: only when certifying

    return float(proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0])


def gaussian_radius(p_lower: float, sigma: float) -> float:
    """ℓ2 radius σ·Φ⁻¹(p) certified by Gaussian smoothing when the top class has probability ≥ p."""
    from scipy.stats import norm  # slow import: only when certifying

    return float(sigma * norm.ppf(p_lower))


def top_two_test_pvalue(count_top: int, count_second: int) -> float:
    """Two-sided binomial test that the top class beats the runner-up (Hung & Fithian), as ``predict`` uses.

    ``scipy.stats.binom_test`` was removed in SciPy 1.12; ``binomtest`` is its replacement.
    """
    from scipy.stats import binomtest

    return float(binomtest(count_top, count_top + count_second, p=0.5).pvalue)
