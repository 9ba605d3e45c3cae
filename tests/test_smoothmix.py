"""SmoothMix objective: the attack, the self-mixup target, the KL mask, warm-up, and the exact loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certify.objectives import SmoothMix, make_objective
from certify.objectives.smoothmix import self_mixup, warmup_factor
from certify.params import ParamError


def linear(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).to(dtype)


def batch(seed: int, n: int = 8, lo: float = 0.2, hi: float = 0.8,
          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, 1, 4, 4, generator=g, dtype=dtype)
    return x, torch.randint(0, 3, (n,), generator=g)


def draws(x: torch.Tensor, sigma: float, m: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The noises and λ that ``loss`` draws after ``torch.manual_seed(seed)``, in its order."""
    torch.manual_seed(seed)
    noises = [torch.randn_like(x) * sigma for _ in range(m)]
    return noises, torch.rand(len(x), dtype=x.dtype) / 2


def smoothed_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noises: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        soft = sum(F.softmax(model(x + d), 1) for d in noises) / len(noises)
    return -torch.log(soft.gather(1, y[:, None])).squeeze(1)


def l2(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attack_raises_the_smoothed_nll(seed):
    model, (x, y) = linear(seed), batch(seed)
    noises = [torch.randn_like(x) * 0.25 for _ in range(4)]
    obj = SmoothMix(sigma=0.25, num_noise_vec=4, num_steps=4, step_size=0.25)
    _, x_adv = obj.attack(model, x, y, noises, epoch=20)
    before, after = smoothed_nll(model, x, y, noises), smoothed_nll(model, x_adv, y, noises)
    assert after.sum() > before.sum() + 0.1
    assert (after > before).all()


def test_clean_point_and_adversary_radii():
    model, (x, y) = linear(3), batch(3, lo=0.3, hi=0.7)
    noises = [torch.randn_like(x) * 0.5 for _ in range(2)]
    one_step = SmoothMix(sigma=0.5, num_noise_vec=2, num_steps=4, step_size=0.5, mix_step=1)
    x_tilde, x_adv = one_step.attack(model, x, y, noises, epoch=20)
    assert (l2(x_tilde - x) <= 0.5 + 1e-6).all() and (l2(x_tilde - x) > 0.1).all()
    assert (l2(x_adv - x) > 0.5).all()  # no ε-ball by default: T steps go past one step's length
    assert 0 <= x_adv.min() and x_adv.max() <= 1

    x_tilde, _ = SmoothMix(sigma=0.5, num_steps=4, step_size=0.5, mix_step=0).attack(model, x, y, noises, 20)
    assert torch.equal(x_tilde, x)
    # mix_step == T: the loop never reaches it, so x̃ stays x, as in the reference
    x_tilde, x_adv = SmoothMix(sigma=0.5, num_steps=2, step_size=0.5, mix_step=2).attack(model, x, y, noises, 20)
    assert torch.equal(x_tilde, x) and not torch.equal(x_adv, x)

    ball = SmoothMix(sigma=0.5, num_steps=5, step_size=0.5, maxnorm=0.3)
    _, x_adv = ball.attack(model, x, y, noises, epoch=20)
    assert (l2(x_adv - x) <= 0.3 + 1e-6).all() and (l2(x_adv - x) > 0.29).all()


def test_self_mixup_targets():
    soft = F.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 1)
    x_clean, x_adv = torch.zeros(4, 1, 2, 2), torch.ones(4, 1, 2, 2)
    lam = torch.tensor([0.0, 0.1, 0.25, 0.5])
    x_mix, y_mix = self_mixup(x_clean, x_adv, soft, lam)
    for i, l in enumerate(lam.tolist()):
        assert torch.allclose(y_mix[i], (1 - l) * soft[i] + l / 3)
        assert torch.allclose(x_mix[i], torch.full((1, 2, 2), l))
    assert torch.allclose(y_mix.sum(1), torch.ones(4))
    assert torch.allclose(y_mix[3], 0.5 * soft[3] + 1 / 6)


def test_kl_term_is_masked_by_the_smoothed_prediction_but_averaged_over_all():
    model = linear(0)
    with torch.no_grad():  # a constant classifier: always class 0, with probabilities p
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
    p = F.softmax(model[1].bias.detach(), 0)
    x, _ = batch(1, n=4)
    y = torch.tensor([0, 1, 0, 2])
    obj = SmoothMix(sigma=0.3, num_noise_vec=2, num_steps=2, eta=1.0, warmup=1)
    torch.manual_seed(7)
    _, stats = obj.loss(model, x, y, epoch=0)
    _, lam = draws(x, 0.3, 2, seed=7)
    kl = torch.stack([((1 - l) * p + l / 3) @ (torch.log((1 - l) * p + l / 3) - torch.log(p)) for l in lam])
    assert (kl > 1e-3).all()  # the wrong samples would contribute if unmasked
    assert stats["correct"] == 2
    assert stats["mixup"] == pytest.approx(((kl[0] + kl[2]) / 4).item(), rel=1e-5)


def test_warmup_scales_mixup_weight_and_one_step_radius():
    assert [warmup_factor(e, 10) for e in (0, 4, 9, 20)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    model, (x, y) = linear(2), batch(2, lo=0.5, hi=0.55)  # a 0.4 step cannot reach the [0, 1] clamp
    obj = SmoothMix(sigma=0.25, num_noise_vec=2, num_steps=3, step_size=0.4, eta=2.0, mix_step=1)
    for epoch, w in [(0, 0.1), (4, 0.5), (9, 1.0), (20, 1.0)]:
        noises = [torch.randn_like(x) * 0.25 for _ in range(2)]
        x_tilde, _ = obj.attack(model, x, y, noises, epoch)
        assert l2(x_tilde - x) == pytest.approx(torch.full((8,), 0.4 * w), rel=1e-5)
        _, stats = obj.loss(model, x, y, epoch)
        assert stats["mixup_weight"] == pytest.approx(2.0 * w)
    assert SmoothMix(sigma=0.25, maxnorm_s=0.6, warmup=4).clean_radius(1) == pytest.approx(0.3)


def independent_loss(model, x, y, noises, lam, step, steps, mix_step, radius, weight):
    """SmoothMix written out with loops over samples and noises, from the formulas in
    docs/smoothing.md#smoothmix-algorithm."""
    B, m, K = len(x), len(noises), 3

    def soft_at(z):
        return sum(F.softmax(model(z + d), 1) for d in noises) / m

    iterates, adv = [x], x
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        nll = -sum(torch.log(soft_at(adv)[i, y[i]]) for i in range(B))
        (g,) = torch.autograd.grad(nll, adv)
        adv = torch.stack([adv[i] + step * g[i] / (g[i].norm() + 1e-8) for i in range(B)]).detach().clamp(0, 1)
        iterates.append(adv)
    delta = iterates[mix_step] - x
    x_tilde = torch.stack([x[i] + delta[i] * min(1.0, radius / max(delta[i].norm().item(), 1e-30))
                           for i in range(B)])
    soft = soft_at(x_tilde)
    ce = sum(-F.log_softmax(model(x_tilde + d), 1)[i, y[i]] for d in noises for i in range(B)) / (m * B)
    mixup = 0.0
    for i in range(B):
        if soft[i].argmax() != y[i]:
            continue
        target = (1 - lam[i]) * soft[i] + lam[i] / K
        x_mix = (1 - lam[i]) * x_tilde[i] + lam[i] * adv[i]
        for d in noises:
            log_q = F.log_softmax(model((x_mix + d[i])[None]), 1)[0]
            mixup = mixup + (target * (target.log() - log_q)).sum()
    return ce + weight * mixup / (m * B), x_tilde


def test_loss_equals_an_independent_computation():
    model = linear(5, torch.float64)
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    x, _ = batch(5, n=4, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 2])
    obj = SmoothMix(sigma=0.8, num_noise_vec=2, num_steps=2, step_size=0.3, eta=2.0, mix_step=1, warmup=2)
    torch.manual_seed(11)
    loss, stats = obj.loss(model, x, y, epoch=0)
    noises, lam = draws(x, 0.8, 2, seed=11)
    expected, x_tilde = independent_loss(model, x, y, noises, lam, step=0.3, steps=2, mix_step=1,
                                         radius=0.3 * 0.5, weight=2.0 * 0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-7)
    assert stats["correct"] == 1 and stats["mixup"] > 0
    # this case tells the smoothed prediction from each noisy copy's: only the former masks the KL
    with torch.no_grad():
        per_copy = [(model(x_tilde + d).argmax(1) == y).sum().item() for d in noises]
    assert per_copy == [2, 0]


def test_gradient_flows_through_the_mixup_target_unless_detached():
    model, (x, _) = linear(4), batch(4)
    y = model(x).argmax(1)
    grads, losses = [], []
    for detach in (False, True):
        obj = SmoothMix(sigma=0.1, num_noise_vec=2, num_steps=2, step_size=0.5, eta=4.0, warmup=1,
                        detach_target=detach)
        model.zero_grad()
        torch.manual_seed(3)
        loss, stats = obj.loss(model, x, y, epoch=0)
        assert stats["correct"] > 0 and stats["mixup"] > 0
        loss.backward()
        grads.append(model[1].weight.grad.clone())
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert (grads[0] - grads[1]).abs().max() > 1e-4


def test_attack_uses_eval_mode_and_loss_leaves_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 3))
    model[0].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    bn = model[1]
    x, y = batch(0)
    obj = SmoothMix(sigma=0.25, num_noise_vec=2, num_steps=3)
    model.train()
    mean, var, count = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    obj.attack(model, x, y, [torch.randn_like(x) * 0.25 for _ in range(2)], epoch=0)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, count)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    assert all(p.grad is None for p in model.parameters())

    model.eval()
    obj.loss(model, x, y, epoch=0)
    assert all(m.training for m in model.modules())
    assert bn.num_batches_tracked.item() == count.item() + 2  # the CE and mixup forwards, in train mode
    assert not torch.equal(bn.running_mean, mean)


@pytest.mark.parametrize("kwargs, flag", [
    ({"sigma": 0.0}, "sigma"),
    ({"num_noise_vec": 0}, "num_noise_vec"),
    ({"num_steps": 0}, "num_steps"),
    ({"step_size": 0.0}, "step_size"),
    ({"eta": -1.0}, "eta"),
    ({"mix_step": 9}, "mix_step"),
    ({"mix_step": -1}, "mix_step"),
    ({"warmup": 0}, "warmup"),
    ({"maxnorm_s": -0.5}, "maxnorm_s"),
    ({"maxnorm": 0.0}, "maxnorm"),
])
def test_bad_hyperparameters_name_their_parameter(kwargs, flag):
    with pytest.raises(ParamError, match=f"^{flag}: ") as err:
        SmoothMix(**({"sigma": 0.5} | kwargs))
    assert err.value.param == flag


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_inputs_outside_unit_box_raise(shift):
    x, y = batch(0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SmoothMix(sigma=0.5, num_steps=1).loss(linear(0), x + shift, y, epoch=0)


def test_registered_with_round_tripping_params():
    obj = make_objective("smoothmix", sigma=0.5, num_noise_vec=2, mix_step=1, maxnorm=4.0)
    assert obj.steps_per_batch == 2 and obj.name == "smoothmix"
    assert obj.certification() == {"kind": "smoothing", "sigma": 0.5}
    params = json.loads(json.dumps(obj.params()))
    assert params == {"sigma": 0.5, "num_noise_vec": 2, "num_steps": 8, "step_size": 1.0, "eta": 1.0,
                      "mix_step": 1, "warmup": 10, "maxnorm_s": None, "maxnorm": 4.0,
                      "detach_target": False, "loss": "ce"}
    assert make_objective("smoothmix", **params).params() == params


def test_ddp_wrapped_model_gives_the_bare_model_gradients(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    x, y = batch(6)
    obj = SmoothMix(sigma=0.25, num_noise_vec=2, num_steps=2)
    bare = linear(6)
    torch.manual_seed(1)
    obj.loss(bare, x, y, epoch=3)[0].backward()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(linear(6))
        torch.manual_seed(1)
        obj.loss(wrapped, x, y, epoch=3)[0].backward()
    finally:
        dist.destroy_process_group()
    for a, b in zip(bare.parameters(), wrapped.module.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
