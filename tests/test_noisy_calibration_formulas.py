"""Formula-level checks for the noisy-label / calibration / set-valued pieces (docs/long_tail_noisy.md).

Hand-computed values and the limits the docs state: α-loss, LogitClip, CALS, ECE / classwise ECE,
average-k and top-k sets, susceptibility, synthetic noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certify.calibration import (
    bin_edges,
    calibration_bins,
    classwise_ece,
    expected_calibration_error,
    reliability_diagram,
)
from certify.data.noisy_labels import (
    ASYMMETRIC_PAIRS,
    asymmetric_noise,
    empirical_transition_matrix,
    noise_rate,
    symmetric_noise,
)
from certify.errors import UserError
from certify.losses import (
    AlphaLoss,
    CALSMultipliers,
    LogitClipLoss,
    alpha_loss,
    cals_constraints,
    cals_loss,
    clip_logits,
    phr_penalty,
    phr_penalty_grad,
    update_multipliers,
    update_rho,
)
from certify.losses.cals import LAMBDA_MAX, LAMBDA_MIN, RHO_MAX, RHO_MIN
from certify.set_prediction import (
    average_k_sets,
    average_k_threshold,
    average_k_tie_fraction,
    mean_set_size,
    set_accuracy,
    set_error,
    top_k_sets,
)
from certify.training.susceptibility import (
    random_label_step,
    select_region1,
    susceptibility,
    susceptibility_regions,
)

INF = float("inf")


def _logits(n: int = 6, c: int = 4, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=dtype) * 2,
            torch.randint(0, c, (n,), generator=g))


# ------------------------------------------------------------ α-loss (docs/long_tail_noisy.md#alpha-loss)

def test_alpha_one_is_cross_entropy_and_continuous_on_both_sides() -> None:
    z, y = _logits()
    ce = F.cross_entropy(z, y)
    assert torch.equal(alpha_loss(z, y, 1.0), ce)
    s = F.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    for alpha in (1 - 1e-12, 1 - 1e-9, 1 - 1e-6, 1 - 1e-4, 1 + 1e-4, 1 + 1e-6, 1 + 1e-9, 1 + 1e-12):
        beta = 1 - 1 / alpha
        # first order in β: ℓ = −s − β s²/2 + O(β²), so |ℓ − CE| ≈ |β| mean(s²)/2
        expected = ce - beta * (s ** 2).mean() / 2
        assert alpha_loss(z, y, alpha).item() == pytest.approx(expected.item(), rel=1e-7, abs=1e-12)
        assert abs(alpha_loss(z, y, alpha).item() - ce.item()) <= abs(beta) * (s ** 2).mean() + 1e-15


def test_alpha_half_is_the_exponential_loss() -> None:
    z, y = _logits()
    p = F.softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    assert alpha_loss(z, y, 0.5).item() == pytest.approx((1 / p - 1).mean().item(), rel=1e-12)
    # margin form with two classes: z = (m, 0), y = 0 gives p = σ(m) and ℓ = e^{−m}
    for m in (-2.0, 0.0, 0.7, 3.0):
        z2 = torch.tensor([[m, 0.0]], dtype=torch.float64)
        assert alpha_loss(z2, torch.tensor([0]), 0.5).item() == pytest.approx(math.exp(-m), rel=1e-12)


def test_alpha_infinity_is_one_minus_p_and_large_alpha_approaches_it() -> None:
    z, y = _logits()
    p = F.softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    assert alpha_loss(z, y, INF).item() == pytest.approx((1 - p).mean().item(), rel=1e-12)
    assert alpha_loss(z, y, 1e7).item() == pytest.approx((1 - p).mean().item(), rel=1e-5)


def test_alpha_two_hand_value() -> None:
    # logits (0, 0): p_y = 1/2, ℓ² = 2/(2−1)·(1 − (1/2)^{1/2}) = 2 − √2 = 0.585786...
    z = torch.zeros(1, 2, dtype=torch.float64)
    assert alpha_loss(z, torch.tensor([1]), 2.0).item() == pytest.approx(2 - math.sqrt(2), rel=1e-14)
    assert AlphaLoss(2.0)(z, torch.tensor([1])).item() == pytest.approx(2 - math.sqrt(2), rel=1e-14)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.5, 0.9, 1 - 1e-6, 1.0, 1 + 1e-6, 1.1, 2.0, 8.0, INF])
def test_alpha_loss_finite_for_huge_logits(alpha: float) -> None:
    z = torch.tensor([[1e4, -1e4, 0.0], [-3e4, 3e4, 5.0], [1e30, 0.0, -1e30]], requires_grad=True)
    y = torch.tensor([1, 0, 0])
    loss = alpha_loss(z, y, alpha)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert loss.item() >= 0


@pytest.mark.parametrize("alpha", [0.5, 1 + 1e-7, 1.5, INF])
def test_alpha_loss_gradcheck(alpha: float) -> None:
    z, y = _logits(4, 3, seed=1)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: alpha_loss(t, y, alpha), (z,))


def test_alpha_loss_rejects_bad_alpha() -> None:
    z, y = _logits()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            alpha_loss(z, y, bad)


# --------------------------------------------------------- LogitClip (docs/long_tail_noisy.md#logitclip)

@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_logit_clip_norm_bound_direction_and_idempotence(p: float) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 10, generator=g) * torch.logspace(-2, 2, 64)[:, None]
    tau = 1.5
    c = clip_logits(z, tau, p)
    norms_in = torch.linalg.vector_norm(z, ord=p, dim=1)
    norms_out = torch.linalg.vector_norm(c, ord=p, dim=1)
    assert (norms_out <= tau * (1 + 1e-6)).all()
    outside = norms_in > tau
    assert outside.any() and (~outside).any()
    assert torch.allclose(norms_out[outside], torch.full_like(norms_out[outside], tau), rtol=1e-6)
    assert torch.equal(c[~outside], z[~outside])  # inside the ball: untouched, bit for bit
    cos = F.cosine_similarity(c[outside], z[outside], dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)
    assert torch.allclose(clip_logits(c, tau, p), c, rtol=1e-6, atol=1e-7)  # idempotent


def test_logit_clip_is_continuous_and_safe_at_zero() -> None:
    u = torch.tensor([[3.0, 4.0]], dtype=torch.float64) / 5  # unit ℓ2 vector
    below, above = clip_logits(u * (2 - 1e-9), 2.0), clip_logits(u * (2 + 1e-9), 2.0)
    assert torch.allclose(below, above, atol=1e-8)
    z = torch.zeros(2, 3, requires_grad=True)
    clip_logits(z, 1.0).sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_logit_clip_official_form_rescales_to_one_over_tau() -> None:
    z = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)  # norms 5 and 0.5
    c = clip_logits(z, 2.0, form="official")
    assert torch.linalg.vector_norm(c[0]).item() == pytest.approx(0.5, rel=1e-6)  # 1/τ, not τ
    assert torch.equal(c[1], z[1])


def test_logit_clip_loss_bounds_cross_entropy() -> None:
    tau, num_classes = 2.0, 5
    z = torch.tensor([[-1e3, 1e3, 0, 0, 0], [0, 0, 0, 0, 50.0]])
    y = torch.tensor([0, 0])
    loss = LogitClipLoss(nn.CrossEntropyLoss(reduction="none"), tau=tau)(z, y)
    # ‖z‖₂ ≤ τ ⇒ z_k − z_y ≤ √2 τ ⇒ CE ≤ log(1 + (C−1) e^{√2 τ})
    assert (loss <= math.log(1 + (num_classes - 1) * math.exp(math.sqrt(2) * tau)) + 1e-5).all()
    ref = F.cross_entropy(clip_logits(z, tau), y, reduction="none")
    assert torch.equal(loss, ref)


# -------------------------------------------------------------------- CALS (docs/long_tail_noisy.md#cals)

def test_cals_constraint_hand_values() -> None:
    z = torch.tensor([[10.0, 0.0, -15.0]])
    # d = max − z = (0, 10, 25); h = (d − 10)/10
    assert torch.allclose(cals_constraints(z, 10.0), torch.tensor([[-1.0, 0.0, 1.5]]))


@pytest.mark.parametrize("h, lam, rho, value, grad", [
    (1.0, 2.0, 1.0, 2.5, 3.0),     # x = 3: (9 − 4)/2
    (-3.0, 2.0, 1.0, -2.0, 0.0),   # x = −1 < 0: −λ²/(2ρ)
    (0.0, 2.0, 1.0, 0.0, 2.0),     # h = 0: P = 0, P' = λ
    (0.5, 1.0, 2.0, 0.75, 2.0),    # x = 2: (4 − 1)/4
    (-0.5, 1.0, 2.0, -0.25, 0.0),  # x = 0 exactly: the kink
])
def test_phr_penalty_value_and_derivative(h: float, lam: float, rho: float, value: float,
                                          grad: float) -> None:
    ht = torch.tensor(h, dtype=torch.float64, requires_grad=True)
    p = phr_penalty(ht, lam, rho)
    assert p.item() == pytest.approx(value, abs=1e-15)
    assert phr_penalty_grad(ht, lam, rho).item() == pytest.approx(grad, abs=1e-15)
    p.backward()
    assert ht.grad.item() == pytest.approx(grad, abs=1e-15)


def test_cals_loss_hand_value() -> None:
    # z = (0, 0), m = 10: h = (−1, −1); λ = 1, ρ = 1: x = 0, P = −1/2 each; CE = log 2
    z = torch.zeros(1, 2, dtype=torch.float64)
    loss = cals_loss(z, torch.tensor([0]), torch.ones(2, dtype=torch.float64), 1.0, 10.0)
    assert loss.item() == pytest.approx(math.log(2) - 0.5, abs=1e-14)


def test_multiplier_update_hand_value() -> None:
    z = torch.tensor([[0.0, -20.0], [0.0, -20.0]])  # h = (−1, 1)
    new = update_multipliers(z, torch.ones(2), 1.0, margin=10.0)
    # P' = (max(0, 1 − 1), max(0, 1 + 1)) = (0, 2), floored at λ_min
    assert new.tolist() == [LAMBDA_MIN, 2.0]


def test_multipliers_stay_within_bounds_on_extreme_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    state = CALSMultipliers(num_classes=4, rho_step=2)
    extremes = [
        torch.zeros(5, 4), torch.full((5, 4), 3e38),
        torch.tensor([[3e38, -3e38, 0.0, 1.0]] * 3),
        torch.tensor([[1e308, -1e308, 0.0, 0.0]], dtype=torch.float64),  # overflows to inf
        torch.randn(7, 4, generator=g) * 1e6, torch.randn(7, 4, generator=g) * 1e-6,
    ]
    reached = 0.0
    for epoch in range(12):
        state.update(extremes[epoch % len(extremes)], epoch)
        assert ((state.lambd >= LAMBDA_MIN) & (state.lambd <= LAMBDA_MAX)).all()
        assert ((state.rho >= RHO_MIN) & (state.rho <= RHO_MAX)).all()
        reached = max(reached, state.lambd.max().item())
    assert reached == LAMBDA_MAX
    # argmax column: h = −1, 1 − 10 < 0 → floor; other column: h ≈ 2e29 → cap
    big = update_multipliers(torch.tensor([[1e30, -1e30]]), torch.ones(2), 10.0)
    assert big.tolist() == [LAMBDA_MIN, LAMBDA_MAX]
    with pytest.raises(ValueError, match="inf or NaN"):
        update_multipliers(torch.tensor([[INF, 0.0]]), torch.ones(2), 1.0)


def test_rho_update_rule() -> None:
    rho = torch.tensor([1.0, 1.0, 1.0, 10.0])
    prev = torch.tensor([0.5, 0.5, -0.2, 0.5])
    cur = torch.tensor([0.5, 0.4, 0.1, 0.5])
    # thresholds τ·max(prev, 0) = (0.45, 0.45, 0, 0.45): stalled, improved, stalled, stalled (capped)
    new = update_rho(rho, cur, prev)
    assert torch.allclose(new, torch.tensor([1.2, 1.0, 1.2, 10.0]))
    assert torch.equal(update_rho(rho, cur, None), rho)


def test_rho_changes_only_every_rho_step_epochs() -> None:
    state = CALSMultipliers(num_classes=3, rho_step=10)
    z = torch.tensor([[0.0, -40.0, -40.0]] * 4)  # constant violation: never improves
    history = []
    for epoch in range(20):
        state.update(z, epoch)
        history.append(state.rho[1].item())
    assert history[:9] == [1.0] * 9 and history[9] == pytest.approx(1.2)
    assert history[10:19] == [history[9]] * 9 and history[19] == pytest.approx(1.44)


# ---------------------------------------------- calibration (docs/long_tail_noisy.md#calibration-metrics)

# Three samples, three classes; no score sits on a bin edge (edges are b/15).
CAL_PROBS = torch.tensor([[0.70, 0.22, 0.08],   # y = 0, pred 0, correct
                          [0.62, 0.28, 0.10],   # y = 1, pred 0, wrong
                          [0.15, 0.08, 0.77]],  # y = 2, pred 2, correct
                         dtype=torch.float64)
CAL_LABELS = torch.tensor([0, 1, 2])


def test_ece_hand_example() -> None:
    # confidences 0.70 (bin 10), 0.62 (bin 9), 0.77 (bin 11): one sample per bin, so
    # ECE = (|1 − .70| + |0 − .62| + |1 − .77|)/3 = (0.30 + 0.62 + 0.23)/3 = 1.15/3
    assert expected_calibration_error(CAL_PROBS, CAL_LABELS) == pytest.approx(1.15 / 3, abs=1e-12)


def test_ece_shared_bin_hand_example() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.02, 0.98], [0.85, 0.15], [0.25, 0.75], [0.62, 0.38]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 0])
    # conf .95 ✓ and .98 ✗ share bin 14: 2/5·|0.5 − 0.965|; .85 ✗ (bin 12), .75 ✓ (bin 11),
    # .62 ✓ (bin 9): (0.93 + 0.85 + 0.25 + 0.38)/5 = 2.41/5 = 0.482
    assert expected_calibration_error(probs, labels) == pytest.approx(0.482, abs=1e-12)


def test_classwise_ece_hand_example() -> None:
    # class 0: scores (.70, .62, .15) vs (1, 0, 0), separate bins: .30 + .62 + .15 = 1.07
    # class 1: (.22, .28, .08) vs (0, 1, 0), separate bins: .22 + .72 + .08 = 1.02
    # class 2: (.08, .10) share bin 1 with targets 0: 2·0.09 = 0.18; .77 vs 1: 0.23; total 0.41
    # each divided by N = 3, averaged over C = 3: (1.07 + 1.02 + 0.41)/9 = 2.5/9
    assert classwise_ece(CAL_PROBS, CAL_LABELS) == pytest.approx(2.5 / 9, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bin_membership_is_lower_open_upper_closed(dtype: torch.dtype) -> None:
    edge = bin_edges(dtype=dtype)[5]  # 1/3 as the reference's linspace gives it in this dtype
    scores = torch.stack([edge, torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype)])
    count, _, _ = calibration_bins(scores, torch.tensor([1, 1, 1]))
    assert count[4] == 1 and count[5] == 0  # an edge belongs to the bin below it
    assert count[14] == 1                    # 1.0 is in the last bin
    assert count.sum() == 2                  # 0.0 is in no bin
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0


def test_reliability_diagram_writes_png_atomically(tmp_path: Path) -> None:
    conf, pred = CAL_PROBS.max(1)
    out = reliability_diagram(conf, pred == CAL_LABELS, tmp_path / "rel.png", title="toy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match=r"\.png"):
        reliability_diagram(conf, pred == CAL_LABELS, tmp_path / "rel.jpg")
    assert [p.name for p in tmp_path.iterdir()] == ["rel.png"]


# -------------------------------------------------- set prediction (docs/long_tail_noisy.md#average-k-sets)

def test_average_k_hand_threshold() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
    # sorted 0.6, 0.5, 0.4, 0.3, 0.1, 0.1; n·k = 2: λ = (0.5 + 0.4)/2
    lam = average_k_threshold(probs, 1)
    assert lam == pytest.approx(0.45, abs=1e-7)
    assert average_k_sets(probs, lam).tolist() == [[True, False, False], [True, False, False]]


@pytest.mark.parametrize("k", [1, 2, 3, 1.5])
def test_average_k_mean_size_is_exactly_k_without_ties(k: float) -> None:
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(200, 10, generator=g) * 2, dim=1)
    lam = average_k_threshold(probs, k)
    sets = average_k_sets(probs, lam)
    assert mean_set_size(sets) == k
    assert average_k_tie_fraction(probs, k, lam) == 1.0
    s = torch.sort(probs.reshape(-1).double(), descending=True).values
    m = int(200 * k)
    assert s[m] < lam < s[m - 1]
    # the quantile form in docs/long_tail_noisy.md#average-k-sets is the lower neighbour s_(nk+1)
    q = np.quantile(probs.reshape(-1).double().numpy(), 1 - k / 10, method="lower")
    assert q == s[m].item()


def test_average_k_ties_and_randomized_rule() -> None:
    probs = torch.tensor([[0.5, 0.25, 0.25]]).repeat(1000, 1)
    lam = average_k_threshold(probs, 2)  # s_(2000) = s_(2001) = 0.25: a tie at the cut
    assert lam == 0.25
    assert mean_set_size(average_k_sets(probs, lam)) == 3.0  # ≥ rule keeps every tie
    q = average_k_tie_fraction(probs, 2, lam)
    assert q == 0.5  # (2000 − 1000 above) / 2000 tied
    sets = average_k_sets(probs, lam, q, generator=torch.Generator().manual_seed(0))
    assert mean_set_size(sets) == pytest.approx(2.0, abs=0.05)  # sd ≈ 0.016


def test_top_k_sets_and_set_error() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 0, 0])
    errors = [set_error(top_k_sets(probs, k), labels) for k in (1, 2, 3)]
    assert errors == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert [mean_set_size(top_k_sets(probs, k)) for k in (1, 2, 3)] == [1.0, 2.0, 3.0]
    empty = torch.zeros(3, 3, dtype=torch.bool)
    assert set_error(empty, labels) == 1.0 and set_accuracy(empty, labels) == 0.0


# ------------------------------------------------ susceptibility (docs/long_tail_noisy.md#susceptibility)

def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(32, 4))


def _full_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "opt": opt.state_dict(),
        "rng": torch.get_rng_state(),
    }


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("warm", [True, False])
def test_susceptibility_restores_everything_bit_for_bit(name: str, warm: bool) -> None:
    model = _net()
    opt = OPTIMIZERS[name](model.parameters())
    if warm:  # momentum buffers / Adam moments and step counts exist
        _train_steps(model, opt, 3, seed=1)
    model.eval()  # a mode that the measurement must not leave changed
    before = _full_state(model, opt)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    r = random_label_step(model, opt, x, 4, torch.Generator().manual_seed(3))
    assert math.isfinite(r)
    _assert_same(before, _full_state(model, opt))
    assert len(opt.state) == (len(list(model.parameters())) if warm else 0)


def test_measuring_susceptibility_does_not_change_the_training_trajectory() -> None:
    runs = []
    for measure in (False, True):
        model = _net()
        opt = OPTIMIZERS["sgd_momentum"](model.parameters())
        _train_steps(model, opt, 2, seed=1)
        if measure:
            x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
            random_label_step(model, opt, x, 4, torch.Generator().manual_seed(3))
        _train_steps(model, opt, 2, seed=4)  # includes dropout: the RNG must be untouched too
        runs.append(model.state_dict())
    _assert_same(runs[0], runs[1])


def test_susceptibility_is_positive_for_a_model_that_fits_random_labels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    r = [random_label_step(model, opt, x, 10, gen) for _ in range(4)]
    assert all(v > 0 for v in r)
    assert susceptibility(r) > 0


def test_susceptibility_running_mean_and_regions() -> None:
    assert susceptibility([5.0, 1.0, 2.0, 3.0]) == 2.0          # r_0 skipped
    assert susceptibility([5.0, 1.0], skip_first=False) == 3.0
    zetas, accs = [0.1, 0.5, 0.2, 0.6, 0.15], [0.9, 0.95, 0.5, 0.4, 0.99]
    # means: ζ 0.31, accuracy 0.748
    assert susceptibility_regions(zetas, accs) == [1, 2, 3, 4, 1]
    assert select_region1(zetas, accs) == [4, 0]


# -------------------------------------------------------------------------------- synthetic noise

def _clean(n: int = 10_000, c: int = 10) -> torch.Tensor:
    return torch.arange(n) % c


def test_symmetric_flip_to_other() -> None:
    clean, r = _clean(), 0.4
    noisy, flipped, t = symmetric_noise(clean, r, 10, torch.Generator().manual_seed(0))
    assert noise_rate(clean, noisy) == r  # exactly ⌊r·n⌋ flips, all to a different class
    assert torch.equal(flipped, torch.nonzero(noisy != clean).reshape(-1))
    assert torch.allclose(t.sum(1), torch.ones(10, dtype=torch.float64))
    assert t[0, 0].item() == pytest.approx(0.6) and t[0, 1].item() == pytest.approx(0.4 / 9)
    emp = empirical_transition_matrix(clean, noisy, 10)
    assert (emp - t).abs().max() < 0.03  # ~1000 per row: sd of an entry ≈ 0.007
    again, _, _ = symmetric_noise(clean, r, 10, torch.Generator().manual_seed(0))
    other, _, _ = symmetric_noise(clean, r, 10, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def test_symmetric_uniform_including_true_class() -> None:
    clean, r = _clean(), 0.4
    noisy, flipped, t = symmetric_noise(clean, r, 10, torch.Generator().manual_seed(0),
                                        include_true_class=True)
    # a tenth of the 4000 redraws land on the true class: rate r(C−1)/C = 0.36, sd ≈ 0.002
    assert noise_rate(clean, noisy) == pytest.approx(0.36, abs=0.01)
    assert flipped.numel() == int((noisy != clean).sum())
    assert torch.allclose(t.sum(1), torch.ones(10, dtype=torch.float64))
    assert t[0, 0].item() == pytest.approx(0.64)


def test_asymmetric_class_pairs() -> None:
    clean, r = _clean(), 0.3
    pairs = ASYMMETRIC_PAIRS["cifar10"]
    noisy, flipped, t = asymmetric_noise(clean, r, "cifar10", 10, torch.Generator().manual_seed(0))
    for i in flipped.tolist():
        assert noisy[i].item() == pairs[clean[i].item()]
    for c in range(10):
        rate_c = noise_rate(clean[clean == c], noisy[clean == c])
        assert rate_c == (r if c in pairs else 0.0)
    assert torch.allclose(t.sum(1), torch.ones(10, dtype=torch.float64))
    assert t[9, 1].item() == pytest.approx(0.3) and t[0, 0].item() == 1.0
    assert noise_rate(clean, noisy) == pytest.approx(r * len(pairs) / 10)
    for name in ("mnist", "fashion-mnist"):
        noisy, _, t = asymmetric_noise(clean, r, name, 10, torch.Generator().manual_seed(0))
        assert torch.allclose(t.sum(1), torch.ones(10, dtype=torch.float64))
        assert torch.allclose(empirical_transition_matrix(clean, noisy, 10), t)


def test_noise_inputs_are_checked() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="rate"):
        symmetric_noise(_clean(), 1.5, 10, g)
    with pytest.raises(ValueError, match="no asymmetric map"):
        asymmetric_noise(_clean(), 0.2, "svhn", 10, g)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        symmetric_noise(_clean(), 0.2, 5, g)
