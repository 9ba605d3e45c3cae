"""Long-tailed formulas against hand-computed values and the anchors in docs/long_tail_noisy.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from certify.data.long_tail import long_tail_counts, long_tail_split
from certify.losses.absgd import ABSGDWeighting
from certify.losses.long_tail import (
    bayias_logits,
    cdb_tau,
    cdb_weights,
    class_balanced_weights,
    ldam_logits,
    ldam_margins,
    vs_logits,
)
from certify.objectives.label_loss import LabelLoss
from certify.objectives.unimix import MixedTargets, UniMix, unimix_factor, unimix_partners
from certify.training.sampling import cdb_example_weights, class_balanced_example_weights

CIFAR10_LT100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# -- long-tailed views (docs/long_tail_noisy.md#long-tailed-views) ---------------------------

def test_counts_match_the_reference_generator():
    assert long_tail_counts(5000, 10, 100) == CIFAR10_LT100
    assert sum(long_tail_counts(500, 100, 100)) == 10847
    assert sum(long_tail_counts(5000, 10, 10)) == 20431 and sum(long_tail_counts(500, 100, 10)) == 19573
    assert long_tail_counts(500, 100, 100)[-1] == 5
    assert long_tail_counts(100, 4, 10, "step") == [100, 100, 10, 10]
    assert long_tail_counts(7, 3, 1) == [7, 7, 7]


def test_split_keeps_the_reference_images_and_a_disjoint_balanced_holdout():
    targets = torch.arange(600) % 6  # 100 per class
    train, held, counts = long_tail_split(targets, 6, 10, seed=0)
    # the reference: np.random.seed(0); per class in order: shuffle its indices, keep the first n_i
    np.random.seed(0)
    expected = []
    for c, n in enumerate(long_tail_counts(100, 6, 10)):
        idx = np.nonzero(targets.numpy() == c)[0]
        np.random.shuffle(idx)
        expected.extend(idx[:n].tolist())
    assert train.tolist() == expected and len(held) == 0 and counts == long_tail_counts(100, 6, 10)
    train, held, counts = long_tail_split(targets, 6, 10, held_out=5, seed=0)
    assert counts[0] == 95 and len(set(train.tolist()) & set(held.tolist())) == 0
    assert torch.bincount(targets[held], minlength=6).tolist() == [5] * 6
    assert torch.bincount(targets[train], minlength=6).tolist() == counts


# -- LDAM and class-balanced weights (docs/long_tail_noisy.md#ldam-drw, #class-weights) -------

def test_ldam_margins_scale_as_n_to_the_minus_quarter_with_max_max_m():
    m = ldam_margins(CIFAR10_LT100, max_m=0.5)
    assert m.max().item() == pytest.approx(0.5) and m.argmax().item() == 9
    assert m[0].item() == pytest.approx(0.158, abs=5e-4)  # docs/long_tail_noisy.md#ldam-drw: 0.158 → 0.500
    product = m.double() * torch.tensor(CIFAR10_LT100, dtype=torch.float64).pow(0.25)
    torch.testing.assert_close(product, torch.full_like(product, product[0].item()), rtol=1e-6, atol=0)


def test_ldam_takes_the_margin_off_the_true_class_before_the_scale():
    z = torch.tensor([[0.5, 0.2]])
    out = ldam_logits(z, torch.tensor([0]), torch.tensor([0.1, 0.3]), s=30)
    torch.testing.assert_close(out, torch.tensor([[12.0, 6.0]]))
    loss = LabelLoss("ldam", ldam_max_m=0.5)
    loss.set_class_counts([16, 1])  # margins: 0.25, 0.5
    value = loss(z, torch.tensor([0]))
    assert value.item() == pytest.approx(math.log1p(math.exp(-30 * (0.5 - 0.25 - 0.2))), rel=1e-5)


def test_class_balanced_weights_match_the_spec_and_sum_to_c():
    w = class_balanced_weights(CIFAR10_LT100, 0.9999)
    spec = [0.051, 0.077, 0.121, 0.195, 0.319, 0.525, 0.868, 1.443, 2.409, 3.993]
    torch.testing.assert_close(w, torch.tensor(spec), atol=6e-4, rtol=0)
    assert w.sum().item() == pytest.approx(10, rel=1e-6)


def test_drw_switches_on_at_its_epoch_and_reduces_as_pytorch_weighted_ce():
    loss = LabelLoss("ce", reweight="drw", drw_epoch=3)
    loss.set_class_counts(CIFAR10_LT100)
    z, y = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    loss.start_epoch(2)
    assert loss.reweighting.current is None
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y))
    loss.start_epoch(3)
    w = class_balanced_weights(CIFAR10_LT100)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y, weight=w))
    assert not torch.allclose(loss(z, y), (w[y] * F.cross_entropy(z, y, reduction="none")).mean())


# -- VS and Bayias (docs/long_tail_noisy.md#vs-loss, #bayias-and-unimix) ----------------------

def test_vs_reduces_to_ce_la_and_cdt():
    counts = [90, 30, 10]
    n = torch.tensor(counts, dtype=torch.float32)
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(vs_logits(z, counts, 0.0, 0.0), z)  # plain CE
    torch.testing.assert_close(vs_logits(z, counts, 0.0, 1.5), z + 1.5 * torch.log(n / n.sum()))  # LA
    torch.testing.assert_close(vs_logits(z, counts, 0.3, 0.0), z * (n / 90).pow(0.3))  # CDT
    # Δ ≤ 1 with the head at exactly 1, smallest for the tail
    delta = vs_logits(torch.ones(1, 3), counts, 0.3, 0.0)[0]
    assert delta[0].item() == 1.0 and delta[2].item() == pytest.approx((10 / 90) ** 0.3)


def test_bayias_is_logit_adjustment_with_tau_one():
    counts = [500, 50, 5]
    z, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 2, 1, 0])
    shift = bayias_logits(z, counts) - vs_logits(z, counts, 0.0, 1.0)
    torch.testing.assert_close(shift, torch.full_like(z, math.log(3)))  # + log C, softmax-invariant
    bayias, la = LabelLoss("bayias"), LabelLoss("vs", vs_gamma=0.0, vs_tau=1.0)
    for loss in (bayias, la):
        loss.set_class_counts(counts)
    torch.testing.assert_close(bayias(z, y), la(z, y))


# -- CDB (docs/long_tail_noisy.md#cdb-w-and-cdb-s) ------------------------------------------

def test_cdb_weights_and_dynamic_tau():
    d = torch.tensor([0.1, 0.5])
    b = 0.9 / 0.51
    assert cdb_tau(d, "dynamic") == pytest.approx(1 / (1 + math.exp(-b)))
    assert cdb_tau(d, "dynamic-imagenet") == pytest.approx(2 / (1 + math.exp(-(b - 1))))
    assert cdb_tau(torch.ones(3), "dynamic-imagenet") == pytest.approx(2 / (1 + math.exp(1)))
    w = cdb_weights(d, 2.0)
    torch.testing.assert_close(w, torch.tensor([0.01, 0.25]) / 0.26 * 2)
    assert cdb_weights(torch.tensor([0.0, 0.5]), 1.0)[0].item() == 0  # the reference drops a perfect class
    assert cdb_weights(torch.tensor([0.0, 0.5]), 1.0, floor=0.05)[0].item() > 0
    torch.testing.assert_close(cdb_weights(torch.zeros(3), 1.0), torch.ones(3))


def test_cdb_loss_starts_as_ce_and_follows_the_validation_difficulty():
    loss = LabelLoss("ce", reweight="cdb", cdb_tau=1.0)
    loss.set_class_counts([10, 5])
    loss.start_epoch(0)
    z, y = torch.randn(8, 2, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1] * 4)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y))  # d = 1 everywhere: plain CE
    loss.reweighting.update(torch.tensor([0.2, 0.6]))
    loss.start_epoch(1)
    w = torch.tensor([0.5, 1.5])
    torch.testing.assert_close(loss(z, y), (w[y] * F.cross_entropy(z, y, reduction="none")).mean())


def test_samplers_draw_classes_as_specified():
    targets = torch.tensor([0] * 6 + [1] * 2)
    counts = torch.tensor([6, 2])
    w = cdb_example_weights(targets, counts, torch.tensor([0.2, 0.8]), tau=1.0)
    class_mass = torch.stack([w[targets == c].sum() for c in range(2)])
    torch.testing.assert_close(class_mass / class_mass.sum(), torch.tensor([0.2, 0.8], dtype=torch.float64))
    floored = cdb_example_weights(targets, counts, torch.tensor([0.0, 0.5]), tau=1.0, floor=0.1)
    mass = torch.stack([floored[targets == c].sum() for c in range(2)])
    torch.testing.assert_close(mass / mass.sum(), torch.tensor([1 / 6, 5 / 6], dtype=torch.float64))
    assert cdb_example_weights(targets, counts, torch.tensor([0.0, 0.5]), tau=1.0)[0] == 0  # the paper
    cb = class_balanced_example_weights(targets, counts, beta=0.5)  # ∝ (1 − β)/(1 − β^n)
    assert (cb[:6] == cb[0]).all() and (cb[6:] == cb[-1]).all()
    assert (cb[0] / cb[-1]).item() == pytest.approx((0.5 / (1 - 0.5 ** 6)) / (0.5 / 0.75))


# -- ABSGD (docs/long_tail_noisy.md#absgd) --------------------------------------------------

def naive_absgd(batches, lam, gamma, alpha):
    """The reference's update, written directly (fine for moderate losses)."""
    u, out = 0.0, []
    for losses in batches:
        e = torch.exp(losses.double() / lam)
        u = (1 - gamma) * u + gamma * alpha * e.mean().item()
        out.append(e / (u * len(losses)))
    return out


def test_absgd_matches_the_reference_and_sums_to_one_over_gamma_alpha_at_first():
    gen = torch.Generator().manual_seed(4)
    batches = [torch.rand(16, generator=gen) * 3 for _ in range(5)]
    for lam in (2.0, -5.0):
        absgd = ABSGDWeighting(lam=lam, init_lambda=lam, gamma=0.3, alpha=0.5)
        absgd.start_epoch(0)
        ours = [absgd.weights(b) for b in batches]
        for mine, ref in zip(ours, naive_absgd(batches, lam, 0.3, 0.5)):
            torch.testing.assert_close(mine.double(), ref, rtol=1e-5, atol=1e-9)
        assert ours[0].sum().item() == pytest.approx(1 / (0.3 * 0.5), rel=1e-5)
    # negative λ down-weights the hardest example, positive λ up-weights it
    assert ABSGDWeighting(lam=-1, init_lambda=-1).weights(batches[0]).argmin() == batches[0].argmax()
    assert ABSGDWeighting(lam=1, init_lambda=1).weights(batches[0]).argmax() == batches[0].argmax()


def test_absgd_is_stable_for_huge_losses_and_erm_in_its_first_stage():
    absgd = ABSGDWeighting(lam=0.01, init_lambda=0.01, gamma=1.0, alpha=1.0)
    w = absgd.weights(torch.tensor([1e4, 1e4 - 1, 5.0]))
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(1.0)  # γ = α = 1: Σ p = 1
    assert w[0].item() == pytest.approx(1 / (1 + math.exp(-100)), rel=1e-6)
    two_stage = ABSGDWeighting(lam=1.0, init_lambda=200.0, lambda_epoch=2)
    two_stage.start_epoch(1)
    torch.testing.assert_close(two_stage.weights(torch.tensor([1.0, 9.0])), torch.tensor([0.5, 0.5]))
    assert two_stage.log_u is None  # ERM does not touch u
    two_stage.start_epoch(2)
    assert two_stage.current == 1.0 and two_stage.weights(torch.tensor([1.0, 9.0]))[1] > 0.9
    with pytest.raises(ValueError):
        ABSGDWeighting(lam=0.0)


def test_absgd_weights_are_detached_and_applied_to_class_weighted_losses():
    loss = LabelLoss("ce", reweight="cb")
    loss.set_class_counts([8, 2])
    absgd = ABSGDWeighting(lam=1.0, init_lambda=1.0, gamma=1.0, alpha=1.0)
    loss.set_example_weighting(absgd)
    loss.start_epoch(0)
    z = torch.zeros(2, 2, requires_grad=True)
    y = torch.tensor([0, 1])
    value = loss(z, y)
    weighted = class_balanced_weights([8, 2])[y] * math.log(2)
    p = torch.softmax(weighted, 0)  # γ = α = 1: p_i = exp(ℓ_i)/Σ exp(ℓ)
    assert value.item() == pytest.approx((p * weighted).sum().item(), rel=1e-5)
    value.backward()  # the gradient flows only through ℓ, not through p
    expected = (p * class_balanced_weights([8, 2])[y]).view(2, 1) * (torch.softmax(z, 1) - F.one_hot(y, 2))
    torch.testing.assert_close(z.grad, expected.detach(), rtol=1e-5, atol=1e-7)


# -- UniMix (docs/long_tail_noisy.md#bayias-and-unimix) ------------------------------------

def test_unimix_factor_concentrates_at_xi_star():
    torch.manual_seed(0)
    counts = torch.tensor([400, 100])
    y_a, y_b = torch.zeros(40000, dtype=torch.long), torch.ones(40000, dtype=torch.long)
    lam = unimix_factor(y_a, y_b, counts, alpha=0.8)
    assert ((lam >= 0) & (lam <= 1)).all()
    hist = torch.histc(lam, bins=20, min=0, max=1)
    assert hist.argmax().item() in (3, 4)  # the bins next to ξ* = 100/500: the head image weighs least
    assert hist[3:5].sum() > 1.5 * hist[12:14].sum()  # mass near ξ*, not at the opposite point
    with pytest.raises(ValueError):
        UniMix(alpha=1.0)


def test_unimix_partners_favour_the_tail_and_the_loss_mixes_both_labels():
    torch.manual_seed(1)
    counts = torch.tensor([100, 1])
    y = torch.tensor([0, 1])
    picks = torch.stack([unimix_partners(y, counts, -0.5) for _ in range(4000)])
    assert (picks == 1).float().mean().item() == pytest.approx(1 / 1.1, abs=0.02)
    loss = LabelLoss("ce", unimix=True)
    loss.set_class_counts([100, 1])
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    mixed = MixedTargets(torch.tensor([0, 0, 1]), torch.tensor([1, 0, 1]), torch.tensor([0.25, 1.0, 0.5]))
    expected = (0.25 * F.cross_entropy(z[:1], torch.tensor([0])) + 0.75 * F.cross_entropy(z[:1], torch.tensor([1]))
                + F.cross_entropy(z[1:2], torch.tensor([0])) + F.cross_entropy(z[2:], torch.tensor([1]))) / 3
    torch.testing.assert_close(loss(z, mixed), expected)
    # with class weights each label's loss carries its own class's weight
    weighted = LabelLoss("ce", unimix=True, reweight="cb", cb_beta=0.5, weight_reduction="mean")
    weighted.set_class_counts([2, 1])
    weighted.start_epoch(0)
    w = class_balanced_weights([2, 1], 0.5)  # (2/3, 4/3)
    half = MixedTargets(torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5]))
    zz = torch.tensor([[0.0, 5.0]])
    ce0, ce1 = F.cross_entropy(zz, torch.tensor([0])), F.cross_entropy(zz, torch.tensor([1]))
    torch.testing.assert_close(weighted(zz, half), 0.5 * w[0] * ce0 + 0.5 * w[1] * ce1)
    weighted.reweighting.reduction = "weighted"
    torch.testing.assert_close(weighted(zz, half), (0.5 * w[0] * ce0 + 0.5 * w[1] * ce1) / (0.5 * w[0] + 0.5 * w[1]))
    x = torch.stack([torch.zeros(2), torch.ones(2)])
    xm, targets = loss.mix(x, y)
    lam = targets.lam.view(-1, 1)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[torch.where(targets.y_b == y, torch.arange(2),
                                                                           1 - torch.arange(2))])

