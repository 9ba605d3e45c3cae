"""Objectives of ℓ∞-distance nets: the v2 clipped hinge + scaled cross-entropy, the v1 hinge, and the
v1 cross-entropy on interval-bound worst-case logits for the hybrid net (docs/linf_dist.md#losses).
All three share the per-minibatch p, λ and ε schedules (docs/linf_dist.md#training-schedule), applied
by :meth:`schedule`.

Margins are in the network's normalized units: an ε in pixel units is ε/σ there, σ being the model's
one input std. During training the worst case is taken from the Lipschitz bound (g ∓ ε/σ), which is
only a true bound at p = ∞ (the reference's "certified (fake)").
"""

from __future__ import annotations

from typing import Any, cast

import torch.nn.functional as F
from torch import Tensor, nn

from certify.linf_dist import usage
from certify.linf_dist.certifier import input_std, split_model
from certify.linf_dist.layers import set_p
from certify.linf_dist.nets import LinfDistHybrid
from certify.linf_dist.schedules import lambda_at, p_at, ramp
from certify.objectives.base import Objective
from certify.params import Param, ParamError
from certify.training.component import TrainingRun

LINF_SCHEDULE_OPTIONS: tuple[Param, ...] = (
    Param("eps_train", None, "ℓ∞ nets: training ε in pixel units (the hinge threshold is θ = 2ε).",
          above=0),
    Param("eps_test", None, "ℓ∞ nets: the ε whose certified accuracy is logged each epoch at p = ∞.",
          above=0),
    Param("p_start", 8.0, "ℓ∞ nets: initial p of the ℓp relaxation.", at_least=1),
    Param("p_end", 1000.0, "ℓ∞ nets: p reached at --p-end-epoch, then ∞ if ≥ 100.", at_least=1),
    Param("p_start_epoch", None, "ℓ∞ nets: epoch where p starts growing geometrically (default: "
          "100/1300 of --epochs, as the v2 reference's default; v2 CIFAR: 100; 0 and 0 with "
          "--p-end-epoch: p = ∞ from the start).", at_least=0, reference="Zhang et al. 2022"),
    Param("p_end_epoch", None, "ℓ∞ nets: epoch where p reaches --p-end and switches to ∞ (default: "
          "1250/1300 of --epochs, as the v2 reference's default; v2 CIFAR: 1250).", at_least=0,
          reference="Zhang et al. 2022"),
    Param("eps_start_epoch", 0.0, "ℓ∞ nets: start of a linear ε ramp (0 and 0: ε from the start).",
          at_least=0),
    Param("eps_end_epoch", 0.0, "ℓ∞ nets: end of the linear ε ramp.", at_least=0),
)
_DEFAULT = {p.name: p.default for p in LINF_SCHEDULE_OPTIONS}

# An unset p ramp spans the v2 reference's default fractions of the run (main.py: --epochs
# 0,0,100,1250,1300, i.e. p = 8 for 100 of 1300 epochs, the ramp until 1250, then p = ∞).
REFERENCE_P_RAMP = (100 / 1300, 1250 / 1300)
# What an unset ramp meant before it defaulted to those fractions: p = ∞ from the first step.
# Checkpoints written then (their objective state lacks the resolved epochs) resume with it.
_OLD_UNSET_RAMP = (0.0, 0.0)


class _LinfObjective(Objective):
    """Schedules shared by the ℓ∞ objectives; subclasses define ``_loss(model, net, x, y, eps)``."""

    required = ("eps_train", "eps_test")

    def __init__(self, eps_train: float, eps_test: float, p_start: float = _DEFAULT["p_start"],
                 p_end: float = _DEFAULT["p_end"], p_start_epoch: float = _DEFAULT["p_start_epoch"],
                 p_end_epoch: float = _DEFAULT["p_end_epoch"],
                 eps_start_epoch: float = _DEFAULT["eps_start_epoch"],
                 eps_end_epoch: float = _DEFAULT["eps_end_epoch"]):
        for param in LINF_SCHEDULE_OPTIONS:
            param.check(locals()[param.name])
        if not p_start <= p_end:
            raise ParamError("p_start", f"must be at most p_end ({p_end}), got {p_start}")
        self.eps_train, self.eps_test = float(eps_train), float(eps_test)
        self.p_start, self.p_end = float(p_start), float(p_end)
        # as given (None: the reference's fraction of the run, known at setup)
        self.given_p_epochs = (None if p_start_epoch is None else float(p_start_epoch),
                               None if p_end_epoch is None else float(p_end_epoch))
        self.p_epochs: tuple[float, float] | None = None  # resolved by setup (or a resume)
        if None not in self.given_p_epochs:
            self.p_epochs = cast(tuple[float, float], self.given_p_epochs)
        self.eps_start_epoch, self.eps_end_epoch = float(eps_start_epoch), float(eps_end_epoch)
        self.p, self.eps, self.ratio = self.p_start, self.eps_train, 0.0

    def setup(self, run: TrainingRun) -> None:
        """Resolve an unset p ramp against the run's epochs (``REFERENCE_P_RAMP``)."""
        self.resolve_p_epochs(run.config.epochs)

    def resolve_p_epochs(self, epochs: int) -> tuple[float, float]:
        """(p_start_epoch, p_end_epoch) of a run of ``epochs`` epochs: the given values, and the
        reference's fractions of the run for those not given."""
        start, end = (given if given is not None else fraction * epochs
                      for given, fraction in zip(self.given_p_epochs, REFERENCE_P_RAMP))
        if None in self.given_p_epochs and start > end:
            unset = "p_start_epoch" if self.given_p_epochs[0] is None else "p_end_epoch"
            raise ParamError(unset, f"unset, it is {start if unset == 'p_start_epoch' else end:g} "
                                    f"(the v2 reference's fraction of {epochs} epochs), which puts "
                                    f"the p ramp's start ({start:g}) after its end ({end:g}): set it")
        self.p_epochs = (start, end)
        return self.p_epochs

    def state_dict(self) -> dict[str, Any]:
        """The resolved ramp, so that a resumed run keeps it when --epochs grows."""
        return {} if self.p_epochs is None else {"p_epochs": list(self.p_epochs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "p_epochs" in state:
            start, end = state["p_epochs"]
            self.p_epochs = (float(start), float(end))
        elif None in self.given_p_epochs:  # written when an unset ramp meant p = ∞ throughout
            start, end = self.given_p_epochs
            self.p_epochs = (_OLD_UNSET_RAMP[0] if start is None else start,
                             _OLD_UNSET_RAMP[1] if end is None else end)

    def start_epoch(self, run: TrainingRun, epoch: int) -> dict[str, Any]:
        usage.counts(reset=True)  # count this epoch's lp_dist calls only
        return {}

    def metrics(self) -> dict[str, Any]:
        """``lp_dist_backend``: the backend(s) that computed this epoch's training and evaluation
        passes (compiled, eager or triton; 'compiled+eager' shows a fallback)."""
        return {"lp_dist_backend": usage.summary(usage.counts(reset=True))}

    def schedule(self, model: nn.Module, step: int, steps_per_epoch: int) -> dict[str, float]:
        """Set p on the model and this step's ε (and λ) before optimizer step ``step``."""
        if self.p_epochs is None:
            raise RuntimeError("the p ramp's epochs default to fractions of the run: call "
                               "setup(run) or resolve_p_epochs(epochs) first (the trainer does)")
        self.ratio = ramp(step, *self.p_epochs, steps_per_epoch)
        self.p = p_at(self.ratio, self.p_start, self.p_end)
        self.eps = self.eps_train * ramp(step, self.eps_start_epoch, self.eps_end_epoch, steps_per_epoch)
        set_p(model, self.p)
        return {"p": self.p, "eps_train": self.eps}

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, float]]:
        net = split_model(model)[1]
        return self._loss(model, net, x, y, self.eps / input_std(model))

    def _loss(self, model: nn.Module, net: nn.Module, x: Tensor, y: Tensor,
              eps: float) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def certification(self) -> dict[str, Any]:
        return {"kind": "linf_dist", "eps": self.eps_test}

    def params(self) -> dict[str, Any]:
        return {"eps_train": self.eps_train, "eps_test": self.eps_test, "p_start": self.p_start,
                "p_end": self.p_end, "p_start_epoch": self.given_p_epochs[0],
                "p_end_epoch": self.given_p_epochs[1], "eps_start_epoch": self.eps_start_epoch,
                "eps_end_epoch": self.eps_end_epoch}


def _shifted_margins(g: Tensor, y: Tensor, theta: float) -> Tensor:
    """res_j = g_j − g_y + θ for j ≠ y and res_y = 0: positive where class j is within θ of y."""
    res = g - g.gather(1, y[:, None]) + theta
    return res.scatter(1, y[:, None], 0.0)


def clipped_hinge(g: Tensor, y: Tensor, theta: float) -> Tensor:
    """v2: mean_b clamp(1 − M/θ, 0, 1) with M = g_y − max_{j≠y} g_j (docs/linf_dist.md#losses)."""
    return (_shifted_margins(g, y, theta) / theta).amax(1).clamp(0.0, 1.0).mean()


def multiclass_hinge(g: Tensor, y: Tensor, theta: float, mix: float = 0.75) -> Tensor:
    """v1: mix·mean_b max_j [res_j]_+ + (1 − mix)·mean_{b,j} [res_j]_+ (the mean includes j = y)."""
    res = _shifted_margins(g, y, theta).clamp_min(0.0)
    return mix * res.amax(1).mean() + (1.0 - mix) * res.mean()


LAMBDA_START = Param("lambda_start", 0.05, "linf_mixture: initial weight λ of the scaled "
                     "cross-entropy.", above=0, reference="Zhang et al. 2022")
LAMBDA_END = Param("lambda_end", 0.0002, "linf_mixture: final λ, reached with p.", above=0)
HINGE_MIX = Param("mix", 0.75, "linf_hinge: weight of the max-over-classes hinge against the mean.",
                  at_least=0, at_most=1, flag="hinge_mix", reference="Zhang et al. 2021")
KAPPA = Param("kappa", 1.0, "linf_hybrid_ce: weight κ of the worst-case cross-entropy.", at_least=0,
              at_most=1)


class LinfMixture(_LinfObjective):
    """v2 (Zhang et al. 2022): clipped hinge at θ = 2ε + λ(t)·CE(s·g, y), s the net's learnable scale."""

    name = "linf_mixture"
    summary = "ℓ∞-dist net v2: clipped hinge + scaled cross-entropy (Zhang et al. 2022)"
    options = (*LINF_SCHEDULE_OPTIONS, LAMBDA_START, LAMBDA_END)

    def __init__(self, eps_train: float, eps_test: float, lambda_start: float = LAMBDA_START.default,
                 lambda_end: float = LAMBDA_END.default, **schedule: Any):
        super().__init__(eps_train, eps_test, **schedule)
        LAMBDA_START.check(lambda_start), LAMBDA_END.check(lambda_end)
        self.lambda_start, self.lambda_end = float(lambda_start), float(lambda_end)

    def _loss(self, model: nn.Module, net: nn.Module, x: Tensor, y: Tensor,
              eps: float) -> tuple[Tensor, dict[str, float]]:
        scale = getattr(net, "logit_scale", None)
        if scale is None:
            raise ParamError("arch_kwargs", "the v2 objective needs the learnable logit scale: "
                                            "build the net with scalar=1")
        g = model(x)
        weight = lambda_at(self.ratio, self.lambda_start, self.lambda_end)
        hinge = clipped_hinge(g, y, 2 * eps)
        ce = F.cross_entropy(scale * g, y)
        return hinge + weight * ce, {"hinge": hinge.item(), "ce": ce.item(), "lambda": weight,
                                     "correct": (g.argmax(1) == y).sum().item()}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "lambda_start": self.lambda_start, "lambda_end": self.lambda_end}


class LinfHinge(_LinfObjective):
    """v1 (Zhang et al. 2021): the multi-class hinge at θ = 2ε on the pure net's logits."""

    name = "linf_hinge"
    summary = "ℓ∞-dist net v1: the multi-class hinge (Zhang et al. 2021)"
    options = (*LINF_SCHEDULE_OPTIONS, HINGE_MIX)

    def __init__(self, eps_train: float, eps_test: float, mix: float = HINGE_MIX.default,
                 **schedule: Any):
        super().__init__(eps_train, eps_test, **schedule)
        HINGE_MIX.check(mix)
        self.mix = float(mix)

    def _loss(self, model: nn.Module, net: nn.Module, x: Tensor, y: Tensor,
              eps: float) -> tuple[Tensor, dict[str, float]]:
        g = model(x)
        loss = multiclass_hinge(g, y, 2 * eps, self.mix)
        return loss, {"hinge": loss.item(), "correct": (g.argmax(1) == y).sum().item()}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "mix": self.mix}


class LinfHybridCE(_LinfObjective):
    """v1 ℓ∞-dist Net+MLP: κ·CE(worst-case logits, y) + (1 − κ)·CE(clean logits, y); the worst case
    bounds the features by their Lipschitz box (± ε) and propagates intervals through the head."""

    name = "linf_hybrid_ce"
    summary = "ℓ∞-dist Net+MLP: cross-entropy on interval-bound worst-case logits"
    options = (*LINF_SCHEDULE_OPTIONS, KAPPA)

    def __init__(self, eps_train: float, eps_test: float, kappa: float = KAPPA.default,
                 **schedule: Any):
        super().__init__(eps_train, eps_test, **schedule)
        KAPPA.check(kappa)
        self.kappa = float(kappa)

    def _loss(self, model: nn.Module, net: nn.Module, x: Tensor, y: Tensor,
              eps: float) -> tuple[Tensor, dict[str, float]]:
        if not hasattr(net, "head"):
            raise ParamError("arch", "objective linf_hybrid_ce trains the hybrid net: use linf_dist_hybrid")
        if model is not split_model(model) and hasattr(model, "module"):
            raise ParamError("objective", "linf_hybrid_ce does not run under torchrun yet")
        normalize = split_model(model)[0]
        hybrid = cast(LinfDistHybrid, net)  # the net with a head (checked above): the hybrid
        features = hybrid.features(normalize(x))
        logits = hybrid.head(features)
        worst = -hybrid.head.margin_lower_bounds(features - eps, features + eps, y)  # res_j, res_y = 0
        robust, clean = F.cross_entropy(worst, y), F.cross_entropy(logits, y)
        loss = self.kappa * robust + (1.0 - self.kappa) * clean
        return loss, {"robust_ce": robust.item(), "ce": clean.item(),
                      "correct": (logits.argmax(1) == y).sum().item()}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kappa": self.kappa}
