"""ℓ∞-distance nets: the op's numerics (eager backend and dispatch), bounds, layers, nets, losses,
schedules (docs/linf_dist.md test values), and the soundness of the certificate under a PGD attack."""

from __future__ import annotations

import math

import pytest
import torch

from certify.linf_dist import lp_dist
from certify.linf_dist.bounds import linf_dist_bounds
from certify.linf_dist.certifier import _min_margin, interval_radii, lipschitz_radii, split_model
from certify.linf_dist.layers import INF, LpDistConv2d, LpDistLinear, MeanShift, get_p, set_p
from certify.linf_dist.nets import LinfDistNet
from certify.linf_dist.reference import linf_dist_bounds_reference, lp_dist_reference
from certify.linf_dist.schedules import lambda_at, p_at, ramp
from certify.nets import build_model
from certify.objectives.linf_margin import clipped_hinge, multiclass_hinge
from certify.params import ParamError
from certify.training.optim import cosine_factor

P_VALUES = [1.0, 2.0, 8.0, 3.7, 8.5, 50.0, 1000.0, INF]


# ---- the op (eager backend; the compiled and Triton backends have their own files) ----

@pytest.mark.parametrize("p", P_VALUES)
def test_eager_matches_reference_values_and_gradients(p):
    torch.manual_seed(0)
    x = torch.randn(6, 13, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 13, dtype=torch.float64, requires_grad=True)
    y, ref = lp_dist(x, w, p, backend="eager"), lp_dist_reference(x, w, p)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    got, want = torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_spec_vectors():
    w = torch.zeros(1, 2)
    for p, value, grad in ((2.0, 2.2360680, (0.4472136, 0.8944272)), (8.0, 257 ** 0.125, None),
                           (INF, 2.0, (0.0, 1.0))):
        x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        y = lp_dist(x, w, p, backend="eager")
        assert y.item() == pytest.approx(value, abs=1e-6)
        if grad is not None:
            y.sum().backward()
            assert x.grad[0].tolist() == pytest.approx(grad, abs=1e-6)
    assert lp_dist(torch.tensor([[1.0, 2.0]]), w, 8.0).item() == pytest.approx(2.0010, abs=1e-4)


def test_ties_at_infinity_go_to_the_first_index_with_the_sign_of_the_difference():
    x = torch.tensor([[2.0, -2.0]], requires_grad=True)
    w = torch.zeros(1, 2, requires_grad=True)
    lp_dist(x, w, INF, backend="eager").sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0]] and w.grad.tolist() == [[-1.0, 0.0]]
    x = torch.tensor([[-3.0, 3.0]], requires_grad=True)
    lp_dist(x, torch.zeros(1, 2), INF, backend="eager").sum().backward()
    assert x.grad.tolist() == [[-1.0, 0.0]]  # d_0 < 0: the gradient is −1 there


def test_large_p_is_finite_and_scale_equivariant():
    torch.manual_seed(1)
    x, w = torch.randn(4, 9) * 1e3, torch.randn(3, 9) * 1e3
    y = lp_dist(x, w, 1000.0, backend="eager")
    assert torch.isfinite(y).all() and y.min() > 100
    torch.testing.assert_close(lp_dist(7 * x, 7 * w, 1000.0, backend="eager"), 7 * y, rtol=1e-5, atol=0)
    naive = ((x[:, None] - w[None]).abs() ** 1000).sum(-1) ** 1e-3  # what the stable form avoids
    assert not torch.isfinite(naive).all()


def test_close_to_cdist_for_small_p_and_infinity():
    torch.manual_seed(2)
    x, w = torch.randn(7, 11), torch.randn(4, 11)
    for p in (1.0, 2.0, 3.7, INF):
        torch.testing.assert_close(lp_dist(x, w, p, backend="eager"), torch.cdist(x, w, p=p),
                                   rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="at least 1"):
        lp_dist(x, w, 0.5)
    with pytest.raises(ValueError, match=r"\(B, CI\)"):
        lp_dist(x, torch.randn(4, 5), 2.0)
    with pytest.raises(ValueError, match="float32 or float64"):
        lp_dist(x.half(), w.half(), 2.0)
    with pytest.raises(ValueError, match="unknown lp_dist backend"):
        lp_dist(x, w, 2.0, backend="magic")


# ---- interval bounds ----

def test_bounds_spec_vector_and_reference():
    lb, ub = linf_dist_bounds(torch.tensor([[-1.0, 0.5]]), torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2))
    assert (lb.item(), ub.item()) == (0.5, 2.0)
    torch.manual_seed(3)
    centre, radius, w = torch.randn(5, 8), torch.rand(5, 8), torch.randn(6, 8)
    got = linf_dist_bounds(centre - radius, centre + radius, w)
    want = linf_dist_bounds_reference(centre - radius, centre + radius, w)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_bounds_contain_sampled_points_and_are_attained_at_corners():
    torch.manual_seed(4)
    lower = torch.randn(3, 6)
    upper = lower + torch.rand(3, 6)
    w = torch.randn(4, 6)
    lb, ub = linf_dist_bounds(lower, upper, w)
    points = lower + torch.rand(200, 3, 6) * (upper - lower)
    d = torch.stack([lp_dist(p, w, INF, backend="eager") for p in points])
    assert (d >= lb - 1e-6).all() and (d <= ub + 1e-6).all()
    # the upper bound is attained at the corner farthest from each weight row
    for o in range(4):
        corner = torch.where((w[o] - lower).abs() > (upper - w[o]).abs(), lower, upper)
        torch.testing.assert_close(lp_dist(corner, w[o:o + 1], INF, backend="eager")[:, 0], ub[:, o])


# ---- layers ----

def test_identity_init_linear_and_conv():
    layer = LpDistLinear(4, 6)
    rows = torch.arange(6)
    assert (layer.weight[rows, rows % 4] == -10).all()
    assert not (LpDistLinear(6, 4).weight == -10).any()  # only when in ≤ out
    conv = LpDistConv2d(2, 3, 3, padding=1).weight.view(3, 2, 3, 3)
    assert [conv[o, o % 2, 1, 1].item() for o in range(3)] == [-10.0] * 3
    # an identity up to a constant: y_i ≈ x_i + 10 for inputs of normal size
    x = torch.randn(5, 4)
    y = LpDistLinear(4, 4, mean_shift=False).eval()
    set_p(y, INF)
    torch.testing.assert_close(y(x), x + 10)


def test_mean_shift_train_and_eval():
    shift = MeanShift(3)
    y = torch.randn(8, 3, 4, 4) + torch.tensor([1.0, -2.0, 5.0]).view(1, 3, 1, 1)
    y.requires_grad_(True)
    out = shift(y)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(shift.running_mean, 0.1 * y.detach().mean(dim=(0, 2, 3)))
    out.sum().backward()  # the mean is not detached: Σ(y − mean y) has zero gradient
    torch.testing.assert_close(y.grad, torch.zeros_like(y), atol=1e-6, rtol=0)
    shift.eval()
    z = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(shift(z), z - shift.running_mean.view(1, 3, 1, 1))
    lower, upper = shift.bounds(z, z + 1)
    torch.testing.assert_close(upper - lower, torch.ones_like(z))


def test_conv_layer_equals_linear_layer_on_patches():
    torch.manual_seed(5)
    conv = LpDistConv2d(2, 4, 3, stride=2, padding=1, mean_shift=False, identity_value=None, p=8.0)
    x = torch.randn(2, 2, 5, 5)
    y = conv(x)
    assert y.shape == (2, 4, 3, 3)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    patch = padded[1, :, 2:5, 0:3].reshape(1, -1)  # output position (1, 0) of image 1
    torch.testing.assert_close(y[1, :, 1, 0], lp_dist_reference(patch, conv.weight, 8.0)[0])


@pytest.mark.parametrize("make", [
    lambda: LpDistLinear(12, 16),
    lambda: LpDistConv2d(3, 5, 3, padding=1),
])
def test_layers_are_1_lipschitz_at_infinity(make):
    torch.manual_seed(6)
    layer = make()
    layer.train()(torch.randn(32, 12) if isinstance(layer, LpDistLinear) else torch.randn(8, 3, 4, 4))
    layer.eval()
    set_p(layer, INF)
    x = torch.randn(20, 12) if isinstance(layer, LpDistLinear) else torch.randn(20, 3, 4, 4)
    eps = 0.3
    delta = (torch.rand_like(x) * 2 - 1) * eps
    assert ((layer(x + delta) - layer(x)).abs() <= eps + 1e-5).all()
    set_p(layer, 8.0)  # at p < ∞ the bound is ε·n^(1/p), and a random δ can exceed ε
    n = x[0].numel() if isinstance(layer, LpDistLinear) else 27
    assert ((layer(x + delta) - layer(x)).abs() <= eps * n ** (1 / 8) + 1e-5).all()


def test_set_and_get_p():
    net = LinfDistNet((1, 4, 4), 3, depth=3, width=8)
    assert get_p(net) == 8.0
    set_p(net, INF)
    assert all(layer.p == INF for layer in net.layers)
    assert get_p(torch.nn.Linear(2, 2)) is None


# ---- nets and their bounds ----

def _trained_like(model, steps=3):
    """Give the mean shifts running statistics, as a trained model has."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(64, *model_input_shape))
    model.eval()
    set_p(model, INF)
    return model


model_input_shape = (1, 6, 6)


def _model(arch, **kw):
    torch.manual_seed(7)
    model = build_model(arch, num_classes=4, input_shape=model_input_shape, mean=(0.3,), std=(0.4,), **kw)
    return _trained_like(model)


def test_pure_net_is_lipschitz_in_pixel_units():
    model = _model("linf_dist_net", depth=4, width=24)
    x = torch.rand(50, *model_input_shape)
    eps = 0.05
    delta = (torch.rand_like(x) * 2 - 1) * eps
    change = (model(x + delta) - model(x)).abs()
    assert (change <= eps / 0.4 + 1e-5).all()  # 1-Lipschitz in normalized units = 1/σ in pixels
    assert change.max() > 0.5 * eps / 0.4  # and not trivially so


def test_net_bounds_contain_the_outputs_of_sampled_inputs():
    for arch, kw in (("linf_dist_net", {"depth": 3, "width": 16}),
                     ("linf_dist_hybrid", {"dist_depth": 2, "width": 16, "hidden": 8})):
        model = _model(arch, **kw)
        normalize, net = split_model(model)
        x = torch.rand(4, *model_input_shape)
        y = model(x).argmax(1)
        lower, upper = (x - 0.03).clamp(0, 1), (x + 0.03).clamp(0, 1)
        bound = net.margin_lower_bounds(normalize(lower), normalize(upper), y)
        samples = lower + torch.rand(300, *x.shape) * (upper - lower)
        for s in samples:
            g = model(s)
            assert (g.gather(1, y[:, None]) - g >= bound - 1e-5).all(), arch


def test_interval_radius_is_at_least_the_lipschitz_radius():
    model = _model("linf_dist_net", depth=3, width=16)
    x = torch.rand(16, *model_input_shape)
    logits = model(x)
    lip = lipschitz_radii(model, logits)
    ibp = interval_radii(model, x, logits.argmax(1))
    assert (ibp >= lip - 1e-4).all() and (ibp > lip + 1e-3).any()  # clipping to [0, 1] helps
    seeded = interval_radii(model, x, logits.argmax(1), floor=lip.clamp_min(0))
    assert (seeded >= lip).all()  # exactly: the search starts at the Lipschitz radius


def _fine_bisection(model, x, y, steps=30):
    """The certified radius to 2^-30 by plain bisection over [0, 1]: (lo, hi) with every ε ≤ lo
    certified and hi not (hi = 1 when certified on all of [0, 1]^d)."""
    lo, hi = torch.zeros(len(x)), torch.ones(len(x))
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = _min_margin(model, x, mid, y) > 0
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    whole = _min_margin(model, x, torch.ones(len(x)), y) > 0
    return torch.where(whole, 1.0, lo), torch.where(whole, 1.0, hi)


@pytest.mark.parametrize("arch,kw", [("linf_dist_net", {"depth": 3, "width": 32}),
                                     ("linf_dist_hybrid", {"dist_depth": 2, "width": 32, "hidden": 16})])
def test_interval_search_is_within_its_resolution_of_a_fine_bisection(arch, kw, monkeypatch):
    import certify.linf_dist.certifier as certifier

    model = _model(arch, **kw)
    torch.manual_seed(9)
    x = torch.cat([torch.rand(48, *model_input_shape),  # and a few images that certify widely
                   torch.full((2, *model_input_shape), 0.5)])
    logits = model(x)
    y = logits.argmax(1)
    lo, hi = _fine_bisection(model, x, y)
    evaluated = []
    real = certifier._min_margin
    monkeypatch.setattr(certifier, "_min_margin",
                        lambda m, xs, eps, ys: evaluated.append(len(xs)) or real(m, xs, eps, ys))
    pure = arch == "linf_dist_net"
    floor = lipschitz_radii(model, logits).clamp_min(0) if pure else None
    got = interval_radii(model, x, y, floor=floor)
    assert (got <= hi + 1e-6).all()  # never claims more than the bounds certify
    assert (got >= lo - 2.0 ** -16).all()  # and within the search's resolution of it
    assert got.unique().numel() > 10
    per_image = sum(evaluated) / len(x)
    if pure:  # the Lipschitz jumps (6.3 here; 1.2 to 1.8 on the fmnist-linf-short models)
        assert per_image < 8, per_image
    else:  # plain bisection: the probe, 16 halvings, the check at ε = 1 for some
        assert 10 < per_image <= 18, per_image


def test_the_pure_nets_margin_bound_is_2_over_sigma_lipschitz_in_eps():
    """What lets the interval search jump: growing the pixel box by δ lowers the margin lower
    bound by at most 2δ/σ (here σ = 0.4), and clipping makes it drop more slowly."""
    model = _model("linf_dist_net", depth=4, width=24)
    torch.manual_seed(10)
    x = torch.rand(32, *model_input_shape)
    y = model(x).argmax(1)
    eps = torch.linspace(0, 0.4, 41)
    m = torch.stack([_min_margin(model, x, e.expand(len(x)), y) for e in eps])  # (41, 32)
    drop = m[:-1] - m[1:]
    assert (drop >= -1e-5).all()  # non-increasing in ε
    assert (drop <= 2 * 0.01 / 0.4 + 1e-5).all()
    assert (drop > 2 * 0.01 / 0.4 - 1e-4).any()  # the bound is reached (unclipped coordinates)
    assert (drop < 2 * 0.01 / 0.4 - 1e-2).any()  # and clipping to [0, 1] makes it shallower


def test_hybrid_head_margin_bounds_are_exact_for_a_point_box():
    model = _model("linf_dist_hybrid", dist_depth=2, width=12, hidden=6)
    net = split_model(model)[1]
    f = torch.randn(3, 12)
    y = torch.tensor([0, 2, 3])
    logits = net.head(f)
    torch.testing.assert_close(net.head.margin_lower_bounds(f, f, y),
                               logits.gather(1, y[:, None]) - logits, atol=1e-5, rtol=0)


# ---- soundness of the certificate ----

def _pgd(model, x, label, radius, steps=40, restarts=3):
    """ℓ∞ PGD inside the pixel ball of per-example ``radius`` (clipped to [0, 1]): the best
    attempt to change the prediction away from ``label``; returns the predictions it reaches."""
    radius = radius.view(-1, *([1] * (x.dim() - 1)))
    worst = model(x).argmax(1)
    for restart in range(restarts):
        delta = (torch.rand_like(x) * 2 - 1) * radius if restart else torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = model((x + delta).clamp(0, 1))
            others = logits.scatter(1, label[:, None], -1e9).amax(1)
            margin = logits.gather(1, label[:, None])[:, 0] - others
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            with torch.no_grad():
                delta = (delta - radius / 8 * grad.sign()).clamp(-radius, radius)
        with torch.no_grad():
            pred = model((x + delta).clamp(0, 1)).argmax(1)
            worst = torch.where(pred != label, pred, worst)
    return worst


@pytest.mark.parametrize("arch,kw,bound,beyond", [
    ("linf_dist_net", {"depth": 3, "width": 32}, "lipschitz", 1.5),
    ("linf_dist_net", {"depth": 3, "width": 32}, "interval", 1.5),
    ("linf_dist_hybrid", {"dist_depth": 2, "width": 32, "hidden": 16}, "interval", 3.0),
])
def test_pgd_never_breaks_a_certificate(arch, kw, bound, beyond):
    model = _model(arch, **kw)
    torch.manual_seed(8)
    x = torch.rand(64, *model_input_shape)
    logits = model(x)
    pred = logits.argmax(1)
    radius = lipschitz_radii(model, logits) if bound == "lipschitz" else interval_radii(model, x, pred)
    assert (radius > 0).sum() > 32
    inside = _pgd(model, x, pred, radius * 0.999)
    assert (inside == pred).all()
    # the attack is not toothless: a little beyond the certified radius it succeeds on many
    outside = _pgd(model, x, pred, radius * beyond)
    assert (outside != pred).sum() >= 10


# ---- losses ----

def test_clipped_hinge_at_the_spec_margins():
    theta = 0.6
    for margin, want in ((theta, 0.0), (1.5 * theta, 0.0), (0.0, 1.0), (-0.4, 1.0), (theta / 2, 0.5)):
        g = torch.tensor([[margin, 0.0, -1.0]], requires_grad=True)
        loss = clipped_hinge(g, torch.tensor([0]), theta)
        assert loss.item() == pytest.approx(want, abs=1e-6)
        loss.backward()
        if margin <= 0 or margin >= theta:
            assert g.grad.abs().sum() == 0  # clipped: no gradient from the hinge
        else:
            assert g.grad[0, 0].item() == pytest.approx(-1 / theta)


def test_v1_hinge_value():
    g = torch.tensor([[1.0, 0.8, 0.1], [0.0, 0.5, 0.2]])
    y = torch.tensor([0, 2])
    theta = 0.5
    # res: [[0, 0.3, 0], [0.3, 0.8, 0]] → max per row 0.3, 0.8; mean of all 1.4/6
    want = 0.75 * (0.3 + 0.8) / 2 + 0.25 * (1.4 / 6)
    assert multiclass_hinge(g, y, theta, 0.75).item() == pytest.approx(want, abs=1e-6)
    assert multiclass_hinge(g, y, theta, 1.0).item() == pytest.approx(0.55, abs=1e-6)


def test_cifar_8px_theta():
    assert 0.09411 / 0.2009 == pytest.approx(0.46844, abs=1e-5)
    assert 2 * 0.09411 / 0.2009 == pytest.approx(0.93688, abs=1e-5)


def test_mixture_loss_uses_the_scaled_logits_and_lambda():
    from certify.objectives import make_objective

    model = build_model("linf_dist_net", num_classes=3, input_shape=(1, 2, 2), mean=(0.0,), std=(0.5,),
                        depth=2, width=4, scalar=1)
    objective = make_objective("linf_mixture", eps_train=0.1, eps_test=0.05, lambda_start=0.5,
                               lambda_end=0.5, p_start_epoch=0, p_end_epoch=10)
    objective.schedule(model, 0, 10)
    net = split_model(model)[1]
    with torch.no_grad():
        net.logit_scale.fill_(3.0)
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    loss, stats = objective.loss(model, x, y, 0)
    g = model(x)
    want = clipped_hinge(g, y, 2 * 0.1 / 0.5) + 0.5 * torch.nn.functional.cross_entropy(3 * g, y)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert stats["lambda"] == 0.5


# ---- schedules (docs/linf_dist.md#training-schedule: v2 CIFAR 8/255, N = 98,
# p from epoch 100 to 1250 of 1300) ----

@pytest.mark.parametrize("epoch,p", [(100, 8.0), (499, 42.72), (675, 89.443), (999, 348.60),
                                     (1199, 807.25), (1250, INF), (1299, INF), (0, 8.0)])
def test_p_schedule(epoch, p):
    got = p_at(ramp(epoch * 98, 100, 1250, 98))
    assert got == p if math.isinf(p) else got == pytest.approx(p, rel=2e-4)


def test_lambda_and_lr_schedules():
    r = ramp(675 * 98, 100, 1250, 98)
    assert lambda_at(r, 0.1, 0.0005) == pytest.approx(0.0070711, rel=1e-4)
    assert 0.03 * cosine_factor(650 * 98, 1300, 98) == pytest.approx(0.015)
    assert cosine_factor(0, 1300, 98) == 1.0 and cosine_factor(1300 * 98, 1300, 98) == pytest.approx(0)
    # v1: constant until e1, then a cosine over the rest
    assert cosine_factor(49 * 118, 400, 118, start_epoch=50) == 1.0
    assert cosine_factor(225 * 118, 400, 118, start_epoch=50) == pytest.approx(0.5)
    assert p_at(1.0, 8.0, 50.0) == 50.0  # p_end < 100: no switch to ∞
    assert ramp(5, 3, 3, 10) == 1.0  # an empty ramp is done from the start


def test_objective_schedule_sets_p_eps_and_lambda_on_the_model():
    from certify.objectives import make_objective

    model = build_model("linf_dist_net", num_classes=3, input_shape=(1, 2, 2), mean=(0.0,), std=(1.0,),
                        depth=2, width=4)
    objective = make_objective("linf_hinge", eps_train=0.2, eps_test=0.1, p_start_epoch=1,
                               p_end_epoch=3, eps_start_epoch=0, eps_end_epoch=2)
    assert objective.schedule(model, 0, 10) == {"p": 8.0, "eps_train": 0.0}
    values = objective.schedule(model, 20, 10)
    assert values["p"] == pytest.approx(8 * 125 ** 0.5) and values["eps_train"] == pytest.approx(0.2)
    assert get_p(model) == values["p"]
    assert objective.schedule(model, 30, 10)["p"] == INF and get_p(model) == INF


# ---- the p ramp's default: the v2 reference's fractions of the run ----

def _reference_p(epoch, minibatch, epochs, batches_per_epoch, p_start=8.0, p_end=1000.0):
    """v2 main.py's create_schedule with its default --epochs 0,0,100,1250,1300 scaled to a run of
    ``epochs`` epochs (cal_ratio, then p = p_start·exp(log(p_end/p_start)·ratio), ∞ once done)."""
    start, end = 100 / 1300 * epochs, 1250 / 1300 * epochs
    ratio = min(max(((epoch - start) * batches_per_epoch + minibatch)
                    / ((end - start) * batches_per_epoch), 0), 1)
    return INF if ratio >= 1 and p_end >= 100 else p_start * math.exp(math.log(p_end / p_start) * ratio)


def _setup(objective, epochs):
    from types import SimpleNamespace

    objective.setup(SimpleNamespace(config=SimpleNamespace(epochs=epochs)))
    return objective


@pytest.mark.parametrize("epochs,batches", [(1300, 98), (16, 10), (3, 7)])
def test_unset_p_ramp_follows_the_reference_fractions_of_the_run(epochs, batches):
    from certify.objectives import make_objective

    model = build_model("linf_dist_net", num_classes=3, input_shape=(1, 2, 2), mean=(0.0,), std=(1.0,),
                        depth=2, width=4, scalar=1)
    objective = _setup(make_objective("linf_mixture", eps_train=0.1, eps_test=0.05), epochs)
    assert objective.p_epochs == pytest.approx((epochs / 13, epochs * 25 / 26))
    last = epochs * batches - 1
    for step in [*range(0, last, max(1, last // 97)), last]:
        got = objective.schedule(model, step, batches)["p"]
        want = _reference_p(step // batches, step % batches, epochs, batches)
        assert got == want if math.isinf(want) else got == pytest.approx(want, rel=1e-12), step
        assert get_p(model) == got
    assert objective.schedule(model, 0, batches)["p"] == 8.0  # not ∞ from the first step
    # ∞ for the last 1/26 of the run (a 3-epoch run of 7 batches ends just before: at p = 951)
    assert (objective.schedule(model, last, batches)["p"] == INF) == (epochs > 3)
    assert objective.params()["p_start_epoch"] is None  # recorded as given: unset


def test_unset_p_ramp_at_the_v2_cifar_spec_values():
    from certify.objectives import make_objective

    objective = _setup(make_objective("linf_mixture", eps_train=0.1, eps_test=0.05), 1300)
    assert objective.p_epochs == pytest.approx((100, 1250))  # what the CIFAR scripts set
    model = build_model("linf_dist_net", num_classes=3, input_shape=(1, 2, 2), mean=(0.0,), std=(1.0,),
                        depth=2, width=4, scalar=1)
    for epoch, p in [(0, 8.0), (100, 8.0), (499, 42.72), (999, 348.60), (1199, 807.25), (1250, INF)]:
        got = objective.schedule(model, epoch * 98, 98)["p"]
        assert got == p if math.isinf(p) else got == pytest.approx(p, rel=2e-4), epoch


def test_given_p_ramp_epochs_are_kept_and_one_given_value_combines_with_the_default():
    from certify.objectives import make_objective

    both = _setup(make_objective("linf_hinge", eps_train=0.2, eps_test=0.1, p_start_epoch=4,
                                 p_end_epoch=11), 16)
    assert both.p_epochs == (4.0, 11.0)
    none = _setup(make_objective("linf_hinge", eps_train=0.2, eps_test=0.1, p_start_epoch=0,
                                 p_end_epoch=0), 16)
    model = build_model("linf_dist_net", num_classes=3, input_shape=(1, 2, 2), mean=(0.0,), std=(1.0,),
                        depth=2, width=4)
    assert none.schedule(model, 0, 10)["p"] == INF  # 0 and 0, given: no ramp, as before
    end_only = _setup(make_objective("linf_hinge", eps_train=0.2, eps_test=0.1, p_end_epoch=10), 26)
    assert end_only.p_epochs == (2.0, 10.0)
    with pytest.raises(ParamError, match="p_end_epoch: unset, it is 15.3846.*after its end"):
        _setup(make_objective("linf_hinge", eps_train=0.2, eps_test=0.1, p_start_epoch=20), 16)
    with pytest.raises(RuntimeError, match="setup"):
        make_objective("linf_hinge", eps_train=0.2, eps_test=0.1).schedule(model, 0, 10)


def test_recipes_set_both_ramp_epochs_so_their_schedules_do_not_change():
    from certify.objectives import make_objective
    from certify.training.recipes import available_recipes, load_recipe

    linf = [name for name in available_recipes() if "linf" in name]
    assert len(linf) >= 8
    for name in linf:
        recipe = load_recipe(name)
        objective = _setup(make_objective(recipe.config["objective"], **recipe.objective),
                           recipe.config["epochs"])
        assert objective.p_epochs == (float(recipe.objective["p_start_epoch"]),
                                      float(recipe.objective["p_end_epoch"])), name


def test_a_resumed_run_keeps_its_resolved_ramp_and_old_checkpoints_keep_their_meaning():
    from certify.objectives import make_objective

    first = _setup(make_objective("linf_mixture", eps_train=0.1, eps_test=0.05), 16)
    state = first.state_dict()
    assert state == {"p_epochs": [16 / 13, 16 * 25 / 26]}
    resumed = _setup(make_objective("linf_mixture", eps_train=0.1, eps_test=0.05), 32)  # --epochs 32
    resumed.load_state_dict(state)
    assert resumed.p_epochs == pytest.approx((16 / 13, 16 * 25 / 26))
    old = _setup(make_objective("linf_mixture", eps_train=0.1, eps_test=0.05), 16)
    old.load_state_dict({})  # written when an unset ramp meant p = ∞ from the first step
    assert old.p_epochs == (0.0, 0.0)
