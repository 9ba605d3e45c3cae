"""The certificate's statistics against the table in docs/smoothing.md#anchor-values."""

import math

import pytest
from scipy.stats import beta

from certify.smoothing.bounds import gaussian_radius, lower_confidence_bound, top_two_test_pvalue

# nA -> (pA lower bound, R/σ) at N = 100000, α = 0.001; None: abstain (pA < 0.5)
SPEC_TABLE = [
    (100_000, 0.99993092, 3.8115),
    (99_900, 0.998651, 3.0002),
    (99_000, 0.988989, 2.2900),
    (90_000, 0.897036, 1.2648),
    (60_000, 0.595201, 0.2409),
    (50_000, 0.495109, None),
]


@pytest.mark.parametrize("n_a, p_expected, r_expected", SPEC_TABLE)
def test_spec_table(n_a, p_expected, r_expected):
    p = lower_confidence_bound(n_a, 100_000, 0.001)
    assert p == pytest.approx(p_expected, abs=5e-7)
    if r_expected is None:
        assert p < 0.5
    else:
        assert round(gaussian_radius(p, 1.0), 4) == pytest.approx(r_expected, abs=1e-4)


@pytest.mark.parametrize("n, r_max", [(1000, 2.4633), (100, 1.5005), (10_000, 3.1986)])
def test_radius_ceiling_when_all_votes_agree(n, r_max):
    # all n votes for the class: pA = α^(1/n)
    p = lower_confidence_bound(n, n, 0.001)
    assert p == pytest.approx(0.001 ** (1 / n), rel=1e-9)
    assert gaussian_radius(p, 1.0) == pytest.approx(r_max, abs=1e-4)


def test_one_sided_bound_is_beta_quantile():
    for n_a, n in [(1, 10), (37, 50), (812, 1000)]:
        assert lower_confidence_bound(n_a, n, 0.01) == pytest.approx(beta.ppf(0.01, n_a, n - n_a + 1))
    assert lower_confidence_bound(0, 100, 0.01) == 0.0


def test_radius_scales_with_sigma():
    assert gaussian_radius(0.8, 0.5) == pytest.approx(0.5 * 0.8416212, rel=1e-6)
    assert gaussian_radius(0.5, 0.25) == 0.0


def test_top_two_pvalue_is_two_sided_binomial():
    assert top_two_test_pvalue(50, 50) == pytest.approx(1.0)
    # two-sided binomial test of 60 vs 40 at p = 1/2
    assert top_two_test_pvalue(60, 40) == pytest.approx(0.056887, abs=1e-6)
    assert top_two_test_pvalue(100, 0) == pytest.approx(2 * 0.5 ** 100)
    assert not math.isnan(top_two_test_pvalue(1, 0))
