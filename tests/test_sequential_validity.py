"""Sequential certification is valid: exactly (dynamic programming) and end to end (a half-space).

The exact check computes, for the true p_A on a fine grid that includes every threshold the rule
tests, the probability that the reported lower bound exceeds p_A (a wrong class or a too-large
radius), and asserts it is at most α. A guard shows the same computation catches a rule that checks
after every round at the full α (no split), which is how reusing samples goes wrong.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, norm

from certify.smoothing import SequentialSmooth
from certify.smoothing.bounds import lower_confidence_bound
from certify.smoothing.stopping import (
    StoppingRule,
    cp_lower,
    cp_upper,
    default_radii,
    overcertification_probability,
    round_sizes,
    stopping_distribution,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_smooth import _half_space  # noqa: E402


def _grid(rule: StoppingRule) -> np.ndarray:
    """p values where over-certification is likeliest: each threshold the rule compares with, just
    below every bound value it can report near them, and a fine uniform grid."""
    points = [np.linspace(0.3, 0.9999, 120), rule.thresholds, rule.thresholds - 1e-9]
    for stage in range(rule.rounds):
        _, lower = rule.decision_table(stage)
        for t in rule.thresholds:  # the reportable bounds just above each threshold
            above = lower[lower >= t][:3]
            points.append(above - 1e-12)
    return np.unique(np.clip(np.concatenate(points), 1e-6, 1 - 1e-12))


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.1])
@pytest.mark.parametrize("share, target", [(0.75, "at_n"), (None, "threshold")])
def test_overcertification_probability_is_at_most_alpha_exactly(alpha, share, target):
    rule = StoppingRule(sigma=0.5, alpha=alpha, n=4000, radii=(0.25, 0.5, 0.75, 1.0, 1.25),
                        futility=0.05, first_round=128, final_share=share, futility_target=target)
    worst = max(overcertification_probability(rule, p) for p in _grid(rule))
    assert worst <= alpha
    # not vacuous: the rule spends a real share of α (a rule that never certified would give 0)
    assert worst > min(rule.levels) / 4


def test_default_rule_at_100000_samples_is_valid_exactly():
    """The shipped setting (N = 100,000, doubling from 512, σ = 0.25 radii) on a coarser grid."""
    alpha = 0.001
    rule = StoppingRule(0.25, alpha, 100_000, default_radii(0.25, 100_000, alpha))
    ps = np.unique(np.concatenate([np.linspace(0.45, 0.99995, 25), rule.thresholds - 1e-9]))
    assert max(overcertification_probability(rule, p) for p in ps) <= alpha


def test_guard_a_rule_without_alpha_split_fails_the_exact_check():
    """Checking after every round at the full α (as if each look were the only one) over-certifies."""
    alpha = 0.1
    rule = StoppingRule(sigma=0.5, alpha=alpha, n=4000, radii=(0.25, 0.5, 0.75, 1.0, 1.25),
                        futility=0.05, first_round=128)
    rule.levels = (alpha,) * rule.rounds  # the union bound removed
    rule._tables.clear()
    assert max(overcertification_probability(rule, p) for p in _grid(rule)) > 1.3 * alpha


def test_dynamic_programme_matches_the_binomial_law_for_one_round():
    rule = StoppingRule(0.5, 0.01, 300, (0.5,), first_round=512)  # one round: N = 300
    assert rule.sizes == (300,)
    ((mass, lower),) = stopping_distribution(rule, 0.8)
    np.testing.assert_allclose(mass, binom.pmf(np.arange(301), 300, 0.8), atol=1e-12)
    expected = binom.pmf(np.arange(301), 300, 0.8)[(lower > 0.8) & (lower >= 0.5)].sum()
    assert overcertification_probability(rule, 0.8) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected <= 0.01


def test_bounds_are_the_reference_clopper_pearson():
    for n_a, n in [(0, 10), (7, 10), (10, 10), (99_000, 100_000), (60_000, 100_000)]:
        assert float(cp_lower(n_a, n, 0.001)) == pytest.approx(lower_confidence_bound(n_a, n, 0.001),
                                                               abs=1e-12)
    assert float(cp_upper(3, 10, 0.05)) == pytest.approx(beta.ppf(0.95, 4, 7))
    assert float(cp_upper(10, 10, 0.05)) == 1.0


def test_round_schedule_and_default_radii():
    assert round_sizes(100_000) == (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 100_000)
    assert round_sizes(1000) == (512, 1000)
    assert round_sizes(300) == (300,)
    # σ·Φ⁻¹(α^(1/N)) = 0.953 for σ = 0.25 at N = 100,000, α = 0.001 (3.8115σ:
    # docs/smoothing.md#largest-certifiable-radius)
    assert default_radii(0.25, 100_000, 0.001) == (0.25, 0.5, 0.75)
    assert default_radii(0.5, 100_000, 0.001) == (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert default_radii(1.0, 100_000, 0.001) == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)  # ≤ 12 radii


def test_stopping_decisions_follow_the_rule():
    rule = StoppingRule(0.25, 0.001, 100_000, (0.25, 0.5, 0.75))
    # all 512 votes: Φ⁻¹ of the bound is ~2.1σ, past 0.5 but 0.75 is still reachable → continue
    d = rule.decide(0, 512)
    assert not d.stop and 0.5 < rule.radius(d.p_lower) < 0.75
    # all 8192 votes: certified at 0.75, the largest radius asked → stop
    d = rule.decide(4, 8192)
    assert d.stop and rule.radius(d.p_lower) >= 0.75
    # 200 of 512 votes: the upper bound shows p_A < 1/2 → stop (abstain)
    d = rule.decide(0, 200)
    assert d.stop and d.p_lower < 0.5 and rule.radius(d.p_lower) == 0.0
    # 256 of 512: p_A = 1/2 is not excluded yet → continue
    assert not rule.decide(0, 256).stop
    # the last round always stops, with the bound at its share of α (3/4; the other 8 share 1/4)
    d = rule.decide(rule.rounds - 1, 99_000)
    assert d.stop and d.p_lower == pytest.approx(float(beta.ppf(0.00075, 99_000, 1001)))
    assert rule.levels[:-1] == pytest.approx([0.00025 / 8] * 8) and sum(rule.levels) == pytest.approx(0.001)


THRESHOLDS = (0.0, 0.1, 0.2, 0.3)  # radius 0 (not abstaining) and the radii asked for below


def _certify_half_spaces(margins: list[float], sigma: float, alpha: float, seed: int):
    """(rate of wrong-or-over-certified, mean samples) over one certification per margin."""
    failures, samples = 0, []
    for k, margin in enumerate(margins):
        f, x = _half_space(margin, sigma, seed=k % 7)
        smooth = SequentialSmooth(f, 2, sigma, radii=(0.1, 0.2, 0.3), first_round=64)
        gen = torch.Generator().manual_seed(seed * 100_003 + k)
        c, r = smooth.certify(x, n0=10, n=1000, alpha=alpha, batch_size=500, generator=gen)
        true_r = f.true_radius(x)
        if c != SequentialSmooth.ABSTAIN and (c != int(true_r > 0) or r > abs(true_r)):
            failures += 1
        samples.append(smooth.last_num_samples)
    return failures / len(margins), float(np.mean(samples))


@pytest.mark.slow
def test_sequential_smooth_is_sound_end_to_end_on_a_half_space():
    """≥ 2000 certifications at α = 0.1 where the true radius is known in closed form.

    True radii sit just above the radii the rule tests, where over-certification is likeliest."""
    sigma, alpha, runs = 0.5, 0.1, 2000
    margins = [(t + 0.002) / sigma for t in THRESHOLDS] * (runs // len(THRESHOLDS))
    rate, mean_samples = _certify_half_spaces(margins, sigma, alpha, seed=1)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate
    assert rate > 0.005  # not vacuous: the bound is used close to its level
    assert mean_samples < 1000


@pytest.mark.slow
def test_guard_end_to_end_harness_catches_reuse_without_alpha_split(monkeypatch):
    """The same harness with the rule's α not split over rounds fails: the check has teeth."""
    sigma, alpha, runs = 0.5, 0.1, 2000
    original = StoppingRule.__init__

    def unsplit(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.levels = (self.alpha,) * len(self.sizes)

    monkeypatch.setattr(StoppingRule, "__init__", unsplit)
    margins = [(t + 0.002) / sigma for t in THRESHOLDS] * (runs // len(THRESHOLDS))
    rate, _ = _certify_half_spaces(margins, sigma, alpha, seed=2)
    assert rate > alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate


def test_radius_is_sigma_times_inverse_normal_of_the_bound():
    rule = StoppingRule(0.5, 0.01, 1000, (0.5,))
    assert rule.radius(0.9) == pytest.approx(0.5 * norm.ppf(0.9))
    assert rule.radius(0.49) == 0.0


@pytest.mark.slow
def test_cli_code_path_is_sound_end_to_end_on_a_half_space():
    """The same check through the ``sequential`` method that ``certify run`` uses: per-example
    seeded generators and images sharing forward batches."""
    from types import SimpleNamespace

    from certify.methods import RunContext, Sequential

    sigma, alpha, runs = 0.5, 0.1, 2000
    f, x0 = _half_space(1.0, sigma, seed=3)
    unit = f.w / f.w.norm()
    distances = [t + 0.002 for t in THRESHOLDS] * (runs // len(THRESHOLDS))
    images = [x0 + (d - f.true_radius(x0)) * unit for d in distances]
    ckpt = SimpleNamespace(certification={"kind": "smoothing", "sigma": sigma}, num_classes=2)
    settings = Sequential.resolve({"n0": 10, "n": 1000, "alpha": alpha, "radii": "0.1,0.2,0.3",
                                   "first_round": 64})
    method = Sequential(ckpt, f, settings, RunContext(batch_size=700, seed=5))
    rows = list(method.certify_stream(enumerate(images)))
    wrong = sum(row.prediction != -1 and (row.prediction != 1 or row.radius > f.true_radius(x))
                for row, x in zip(rows, images, strict=True))
    rate = wrong / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate
    assert rate > 0.005
    assert all(row.extra["samples"] in method.rule.sizes for row in rows)
