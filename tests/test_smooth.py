"""Smooth: soundness of the certificate, agreement with the closed form, and the API contract."""

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from certify.smoothing import Smooth


class HalfSpace(nn.Module):
    """f(x) = 1 if w·x + b > 0 else 0: its smoothed class-1 probability is Φ((w·x + b) / (σ‖w‖)),
    and the exact robustness radius of g at x is the distance to the hyperplane, |w·x + b| / ‖w‖."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        score = x.flatten(1) @ self.w.flatten() + self.b
        return torch.stack([-score, score], dim=1)

    def true_radius(self, x) -> float:
        return float((x.flatten() @ self.w.flatten() + self.b) / self.w.norm())


def _half_space(margin_over_sigma: float, sigma: float, shape=(1, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    x = torch.rand(shape, generator=g)
    # choose b so that the distance of x to the plane is margin_over_sigma · σ
    b = margin_over_sigma * sigma * float(w.norm()) - float((x * w).sum())
    return HalfSpace(w, b), x


def test_certificate_is_sound_over_many_runs():
    """The radius exceeds the true one (or the class is wrong) in at most a fraction α of runs."""
    sigma, alpha, runs = 0.5, 0.1, 1500
    f, x = _half_space(margin_over_sigma=0.6, sigma=sigma)  # pA = Φ(0.6) ≈ 0.73
    true_r = f.true_radius(x)
    smooth = Smooth(f, 2, sigma)
    gen = torch.Generator().manual_seed(1)
    failures, radii = 0, []
    for _ in range(runs):
        c, r = smooth.certify(x, n0=20, n=200, alpha=alpha, batch_size=200, generator=gen)
        if c == 0 or (c == 1 and r > true_r):
            failures += 1
        radii.append(r if c == 1 else 0.0)
    rate = failures / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate
    # and not vacuous: the bound is tight enough that a failure rate well above 0 is observed
    # (a certifier that always abstained, or used a far too conservative bound, would show none)
    assert rate > 0.01
    assert 0.5 * true_r < sum(radii) / runs < true_r


def test_point_estimate_instead_of_bound_would_fail_the_soundness_check():
    """Guard for the test above: an unsound radius (no confidence bound) fails it about half the time."""
    sigma, runs = 0.5, 400
    f, x = _half_space(margin_over_sigma=0.6, sigma=sigma)
    true_r = f.true_radius(x)
    smooth = Smooth(f, 2, sigma)
    gen = torch.Generator().manual_seed(2)
    too_big = 0
    for _ in range(runs):
        counts = smooth._count_votes(x, 200, 200, gen)
        p_hat = counts[1].item() / 200
        too_big += sigma * norm.ppf(p_hat) > true_r
    assert too_big / runs > 0.3


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_radius_close_to_closed_form_with_many_samples(margin):
    sigma = 0.25
    f, x = _half_space(margin_over_sigma=margin, sigma=sigma, seed=3)
    c, r = Smooth(f, 2, sigma).certify(x, 100, 100_000, 0.001, 10_000,
                                       generator=torch.Generator().manual_seed(0))
    assert c == 1
    true_r = f.true_radius(x)
    assert true_r == pytest.approx(margin * sigma, rel=1e-5)
    assert true_r - 0.05 * sigma < r <= true_r


def test_abstains_when_classes_are_balanced():
    f, x = _half_space(margin_over_sigma=0.0, sigma=0.25)  # pA = 1/2
    smooth = Smooth(f, 2, 0.25)
    assert smooth.certify(x, 100, 2000, 0.001, 500) == (Smooth.ABSTAIN, 0.0)
    assert smooth.predict(x, 2000, 0.001, 500) == Smooth.ABSTAIN


def test_predict_returns_the_clear_winner():
    f, x = _half_space(margin_over_sigma=-1.5, sigma=0.25)
    assert Smooth(f, 2, 0.25).predict(x, 500, 0.001, 100) == 0


def test_generator_makes_results_independent_of_batch_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x = torch.rand(1, 28, 28)
    smooth = Smooth(model, 10, 0.5)
    results = {bs: smooth.certify(x, 64, 3000, 0.001, bs, generator=torch.Generator().manual_seed(7))
               for bs in (3000, 1000, 333, 64)}
    assert len(set(results.values())) == 1, results
    # and a different seed gives different noise (so the generator is really used)
    other = smooth.certify(x, 64, 3000, 0.001, 1000, generator=torch.Generator().manual_seed(8))
    assert other[1] != results[1000][1]


def test_counts_match_a_plain_reference_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(3, 2, 2)
    smooth = Smooth(model, 3, 0.3)
    counts = smooth._count_votes(x, 250, 100, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    expected = torch.zeros(3, dtype=torch.long)
    for size in (100, 100, 50):
        noise = torch.empty(size, 3, 2, 2).normal_(0, 0.3, generator=gen)
        for v in model(x + noise).argmax(1):
            expected[v] += 1
    assert counts.tolist() == expected.tolist()
    assert counts.sum().item() == 250


def test_noise_is_not_clamped_and_has_sigma():
    seen = []

    class Spy(nn.Module):
        def forward(self, batch):
            seen.append(batch.clone())
            return torch.zeros(len(batch), 2)

    x = torch.full((1, 8, 8), 0.5)
    Smooth(Spy(), 2, 0.7).certify(x, 10, 4000, 0.01, 2000)
    noise = torch.cat(seen[1:]) - x  # estimation batches
    assert noise.shape == (4000, 1, 8, 8)
    assert noise.std().item() == pytest.approx(0.7, rel=0.02)
    assert abs(noise.mean().item()) < 0.01
    assert (x + noise).min() < 0 and (x + noise).max() > 1  # no clamping to [0, 1]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_forward_still_certifies(precision):
    f, x = _half_space(margin_over_sigma=1.0, sigma=0.25, seed=4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-f.w.flatten(), f.w.flatten()]))
        model[1].bias.copy_(torch.tensor([-f.b, f.b]))
    c, r = Smooth(model, 2, 0.25, precision=precision).certify(x, 100, 20_000, 0.001, 5000)
    assert c == 1
    assert r == pytest.approx(f.true_radius(x), abs=0.05)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma=0.0), "sigma"), (dict(sigma=-1.0), "sigma"), (dict(num_classes=1), "num_classes"),
    (dict(precision="fp8"), "precision"),
])
def test_constructor_rejects_bad_values(kwargs, message):
    args = dict(base_classifier=nn.Identity(), num_classes=2, sigma=0.25) | kwargs
    with pytest.raises(ValueError, match=message):
        Smooth(**args)


@pytest.mark.parametrize("kwargs", [dict(n0=0), dict(n=0), dict(alpha=0.0), dict(alpha=1.0),
                                    dict(batch_size=0)])
def test_certify_rejects_bad_values(kwargs):
    smooth = Smooth(nn.Flatten(), 2, 0.25)
    args = dict(x=torch.zeros(2), n0=10, n=10, alpha=0.01, batch_size=10) | kwargs
    with pytest.raises(ValueError):
        smooth.certify(**args)
