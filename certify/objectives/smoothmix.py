"""SmoothMix (Jeong et al., NeurIPS 2021): mix each input with an adversary of its smoothed classifier.

Cross-entropy on noisy copies of x̃, plus a KL term that asks the base classifier, at points on the
segment from x̃ to an ℓ2 adversary of the soft smoothed classifier, to lower its confidence
towards uniform in proportion to the distance travelled. Follows the reference code
(jh-jeong/smoothmix, ``code/train.py``) step by step; see docs/smoothing.md#smoothmix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from certify.objectives.gaussian import SIGMA
from certify.objectives.label_loss import LABEL_LOSS_OPTIONS, LabelLoss, WithLabelLoss
from certify.params import Param, ParamError, resolve

__all__ = ["SmoothMix", "self_mixup", "smoothed_softmax", "warmup_factor"]


def warmup_factor(epoch: int, warmup: int) -> float:
    """w_e = min(1, (epoch+1)/warmup) for a 0-based epoch; ramps the mixup weight and x̃'s radius."""
    return min(1.0, (epoch + 1) / warmup)


def smoothed_softmax(logits: torch.Tensor, m: int) -> torch.Tensor:
    """F̂: the mean softmax over m noise copies stacked noise-major, (m·B, K) -> (B, K)."""
    return F.softmax(logits, dim=1).view(m, -1, logits.shape[1]).mean(0)


def self_mixup(x_clean: torch.Tensor, x_adv: torch.Tensor, soft: torch.Tensor,
               lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_mix = (1-λ)x̃ + λ·x_adv and y_mix = (1-λ)F̂(x̃) + λ/K, one λ per sample.

    The target moves towards uniform as the input moves towards the adversary, which is what
    teaches the base classifier to lose confidence gradually instead of flipping.
    """
    lam_x = lam.view(-1, *([1] * (x_clean.dim() - 1)))
    lam_y = lam.view(-1, 1)
    x_mix = (1 - lam_x) * x_clean + lam_x * x_adv
    y_mix = (1 - lam_y) * soft + lam_y / soft.shape[1]
    return x_mix, y_mix


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under a (Distributed)DataParallel wrapper: the attack must avoid its gradient hooks."""
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters need no gradient during the attack; restore each one's own flag afterwards."""
    # The reference sets requires_grad=True on all parameters afterwards; restoring keeps frozen ones frozen.
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


SMOOTHMIX_OPTIONS: tuple[Param, ...] = (
    Param("num_noise_vec", 1, "SmoothMix m: noise draws per image; each batch is split into m "
          "optimizer steps.", kind=int, at_least=1),
    Param("num_steps", 8, "SmoothMix T: ascent steps of the attack on the smoothed classifier.",
          kind=int, at_least=1),
    Param("step_size", 1.0, "SmoothMix attack step size (ℓ2, pixel units; the reference's --alpha).",
          above=0, flag="attack_step"),
    Param("eta", 1.0, "SmoothMix weight η of the mixup term.", at_least=0),
    Param("mix_step", 0, "SmoothMix: attack step whose point replaces x (0: x; 1: the one-step "
          "adversary).", kind=int, at_least=0),
    Param("warmup", 10, "SmoothMix: epochs over which η and the --mix-step radius ramp up.",
          kind=int, at_least=1),
    Param("maxnorm_s", None, "SmoothMix: ℓ2 radius for the --mix-step point (default: attack-step "
          "× mix-step).", at_least=0),
    Param("maxnorm", None, "SmoothMix: ℓ2 ball for the attack (default: none, only the [0,1] "
          "clamp).", above=0),
    Param("detach_target", False, "SmoothMix: detach the mixup target F̂(x̃) from the graph (the "
          "reference keeps its gradient).", kind=bool),
)
_DEFAULT = {p.name: p.default for p in SMOOTHMIX_OPTIONS}


class SmoothMix(WithLabelLoss):
    """SmoothMix training loss for a randomized-smoothing base classifier at noise level σ.

    The cross-entropy term on the noisy copies of x̃ is a :class:`LabelLoss` (plain CE by default,
    as the reference), so the long-tailed losses, class weights and ABSGD compose with SmoothMix;
    UniMix does not (it would mix the images the attack starts from).

    ``steps_per_batch`` is m: the reference splits each loader batch into m chunks and takes one
    optimizer step per chunk, each chunk with m noise draws, so a step sees as many noisy inputs as
    the loader batch holds.

    ``mix_step == num_steps``: the attack loop never reaches ``i == mix_step``, so, as in the
    reference, x̃ stays x (it is *not* the last iterate); ``mix_step`` in 1..T−1 gives x̃ = x^(mix_step).
    """

    name = "smoothmix"
    summary = "SmoothMix for randomized smoothing (Jeong et al. 2021)"
    options = (SIGMA, *SMOOTHMIX_OPTIONS, *LABEL_LOSS_OPTIONS)
    always_recorded = ("sigma",)

    def __init__(self, sigma: float = SIGMA.default, num_noise_vec: int = _DEFAULT["num_noise_vec"],
                 num_steps: int = _DEFAULT["num_steps"], step_size: float = _DEFAULT["step_size"],
                 eta: float = _DEFAULT["eta"], mix_step: int = _DEFAULT["mix_step"],
                 warmup: int = _DEFAULT["warmup"], maxnorm_s: float | None = _DEFAULT["maxnorm_s"],
                 maxnorm: float | None = _DEFAULT["maxnorm"],
                 detach_target: bool = _DEFAULT["detach_target"], **loss_options: Any):
        own = {k: v for k, v in locals().items() if k not in ("self", "loss_options", "__class__")}
        resolve((SIGMA, *SMOOTHMIX_OPTIONS), own, owner="smoothmix")  # types and ranges
        if not mix_step <= num_steps:
            raise ParamError("mix_step", f"must be in 0..num_steps ({num_steps}), got {mix_step}")
        self.sigma = float(sigma)
        self.num_noise_vec = num_noise_vec
        self.num_steps = num_steps
        self.step_size = float(step_size)
        self.eta = float(eta)
        self.mix_step = mix_step
        self.warmup = warmup
        self.maxnorm_s = None if maxnorm_s is None else float(maxnorm_s)
        self.maxnorm = None if maxnorm is None else float(maxnorm)
        self.detach_target = bool(detach_target)
        self.steps_per_batch = num_noise_vec
        if loss_options.get("unimix"):
            raise ParamError("unimix", "does not combine with objective smoothmix")
        self.label_loss = LabelLoss(**loss_options)

    def clean_radius(self, epoch: int) -> float:
        """The ℓ2 radius around x that x̃ is projected into: maxnorm_s (default step·mix_step) × w_e."""
        base = self.step_size * self.mix_step if self.maxnorm_s is None else self.maxnorm_s
        return base * warmup_factor(epoch, self.warmup)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, noises: Sequence[torch.Tensor],
               epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̃, x_adv): ℓ2 ascent on the soft smoothed classifier's NLL, with the given noise draws.

        Runs the bare model in eval mode with frozen parameters, so BatchNorm statistics and
        parameter gradients are untouched; the model's previous mode is restored.
        """
        if x.min() < 0 or x.max() > 1:
            raise ValueError("SmoothMix attack: input values should be in the [0, 1] range")
        base = _unwrap(model)
        was_training = base.training
        base.eval()
        m = len(noises)
        adv = x.detach()
        init = adv
        try:
            with _frozen(base), torch.enable_grad():
                for i in range(self.num_steps):
                    if i == self.mix_step:
                        init = adv
                    adv = adv.detach().requires_grad_(True)
                    # One batched forward instead of m: identical in eval mode, and faster.
                    soft = smoothed_softmax(base(torch.cat([adv + d for d in noises])), m)
                    nll = F.nll_loss(torch.log(soft.clamp(min=1e-20)), y, reduction="sum")
                    (grad,) = torch.autograd.grad(nll, [adv])
                    norm = grad.reshape(len(grad), -1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
                    adv = self._project(adv.detach() + self.step_size * grad / (norm + 1e-8), x, self.maxnorm)
        finally:
            base.train(was_training)
        return self._project(init, x, self.clean_radius(epoch)), adv.detach()

    @staticmethod
    def _project(point: torch.Tensor, x: torch.Tensor, radius: float | None) -> torch.Tensor:
        """Into the ℓ2 ball of ``radius`` around x (per sample; none when None), then into [0, 1]."""
        if radius is not None:
            point = x + torch.renorm(point - x, p=2, dim=0, maxnorm=radius)
        return point.clamp(0, 1).detach()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        m = self.num_noise_vec
        noises = [torch.randn_like(x) * self.sigma for _ in range(m)]
        x_tilde, x_adv = self.attack(model, x, y, noises, epoch)
        model.train()

        logits_c = model(torch.cat([x_tilde + d for d in noises]))
        soft = smoothed_softmax(logits_c, m)
        ce = self.label_loss(logits_c, y.repeat(m))

        lam = torch.rand(len(x), device=x.device, dtype=x.dtype) / 2
        x_mix, y_mix = self_mixup(x_tilde, x_adv, soft, lam)
        if self.detach_target:
            y_mix = y_mix.detach()  # opt-in: a fixed target, so the KL cannot pull F̂(x̃) towards the mix
        log_q = F.log_softmax(model(torch.cat([x_mix + d for d in noises])), dim=1)
        kl = F.kl_div(log_q, y_mix.repeat(m, 1), reduction="none").sum(1)
        hit = soft.argmax(1) == y
        # Wrongly predicted samples count as zeros: the mean divides by all m·B terms.
        mixup = (hit.to(kl.dtype).repeat(m) * kl).mean()

        weight = self.eta * warmup_factor(epoch, self.warmup)
        loss = ce + weight * mixup
        return loss, {"ce": ce.item(), "mixup": mixup.item(), "mixup_weight": weight,
                      "correct": int(hit.sum().item())}

    def certification(self) -> dict[str, Any]:
        return {"kind": "smoothing", "sigma": self.sigma}

    def params(self) -> dict[str, Any]:
        """The constructor's arguments as given (maxnorm_s None = step·mix_step), so they round-trip."""
        return {"sigma": self.sigma, "num_noise_vec": self.num_noise_vec, "num_steps": self.num_steps,
                "step_size": self.step_size, "eta": self.eta, "mix_step": self.mix_step,
                "warmup": self.warmup, "maxnorm_s": self.maxnorm_s, "maxnorm": self.maxnorm,
                "detach_target": self.detach_target, **self.label_loss.params()}
