"""The loss on (logits, labels) that the classification objectives train with.

One object per run, so every objective that ends in "logits vs labels" (plain training, Gaussian
augmentation) gets the same choices (docs/long_tail_noisy.md, one section each):

- the base loss: cross-entropy with optional label smoothing, the α-loss, CALS (class-wise
  multipliers updated after every epoch from a validation pass), or a long-tailed loss on
  count-adjusted logits: LDAM (with the cosine head and s = 30), VS, Bayias;
- optionally on LogitClip'ed logits;
- per-class weights (``cb``, ``drw``, CDB-W ``cdb``: :mod:`certify.objectives.reweighting`);
- UniMix batches (:mod:`certify.objectives.unimix`), mixed before the objective adds noise;
- ABSGD's per-example attention weights (:mod:`certify.losses.absgd`), attached by the trainer
  when ``--optimizer absgd`` is chosen.

The long-tailed pieces need the training class counts, which the trainer passes in with
``set_class_counts`` once the data is prepared; ``start_epoch`` runs their schedules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certify.errors import UserError
from certify.losses import LOGIT_CLIP_FORMS, CALSMultipliers, alpha_loss, clip_logits
from certify.losses.absgd import ABSGDWeighting
from certify.losses.long_tail import CB_BETA, TAU_RULES, bayias_logits, ldam_logits, ldam_margins, vs_logits
from certify.objectives.base import Objective
from certify.objectives.reweighting import REDUCTIONS, REWEIGHT_RULES, ClassReweighting, class_difficulty
from certify.objectives.unimix import MixedTargets, UniMix
from certify.params import Param, ParamError, resolve
from certify.training.component import TrainingRun

LOSSES = ("ce", "alpha", "cals", "ldam", "vs", "bayias")
COUNT_LOSSES = ("ldam", "vs", "bayias")  # logits adjusted by the class counts
_NUMBER = dict(kind=float)

# The options of every objective that ends in "logits vs labels", declared once.
LABEL_LOSS_OPTIONS: tuple[Param, ...] = (
    Param("loss", "ce", "The loss on the (noisy) logits: cross-entropy, the α-loss (--alpha), CALS "
          "(needs --val-count), or for long-tailed data LDAM (cosine head, s = 30), VS or Bayias "
          "(= logit adjustment with τ = 1).", kind=str, choices=LOSSES),
    Param("label_smoothing", 0.0, "--loss ce: label smoothing ε.", at_least=0, below=1),
    Param("alpha", 1.0, "--loss alpha: α of the α-loss (1 = CE, ½ exponential, inf = 1 − p_y; > 1 "
          "for noisy labels).", above=0, reference="Sypherd et al. 2022",
          flag="loss_alpha", aliases=("alpha",)),
    Param("logit_clip", None, "LogitClip: clamp the logit vector's p-norm to τ before the loss "
          "(training only; default: off).", above=0, reference="Wei et al. 2023"),
    Param("logit_clip_p", 2.0, "LogitClip: the norm's p.", at_least=1),
    # paper (default): rescale to norm τ; official: the released code, rescale to 1/τ on ‖z‖+1e-7
    Param("logit_clip_form", "paper", "LogitClip: the paper's form (rows with norm > τ rescaled to "
          "norm τ) or the official code's (threshold τ on ‖z‖ + 1e-7, rescaled to norm 1/τ).",
          kind=str, choices=LOGIT_CLIP_FORMS, reference="Wei et al. 2023; hongxin001/LogitClip"),
    Param("cals_margin", 10.0, "CALS: the logit-distance margin m.", above=0,
          reference="Liu et al. 2023"),
    Param("ldam_max_m", 0.5, "LDAM: the rarest class's margin (margins ∝ n^(-1/4)).", above=0,
          reference="Cao et al. 2019"),
    Param("ldam_s", 30.0, "LDAM: logit scale s.", above=0, reference="Cao et al. 2019"),
    Param("vs_gamma", 0.3, "VS: γ of the multiplicative Δ_j = (n_j/n_max)^γ (0 gives LA).",
          reference="Kini et al. 2021"),
    Param("vs_tau", 1.0, "VS: τ of the additive ι_j = τ·log π_j (0 gives CDT).",
          reference="Kini et al. 2021"),
    Param("reweight", "none", "Per-class loss weights: class-balanced (cb, β = --cb-beta) from the "
          "start, the same deferred to --drw-epoch (drw), or CDB-W from validation difficulty "
          "(cdb, needs --balanced-val).", kind=str, choices=REWEIGHT_RULES),
    Param("cb_beta", CB_BETA, "cb/drw: β of the effective number.", at_least=0, below=1,
          reference="Cui et al. 2019"),
    Param("drw_epoch", 160, "drw: first epoch (0-based) with class-balanced weights (of 200).",
          kind=int, at_least=0, reference="Cao et al. 2019"),
    Param("cdb_tau", "dynamic", "CDB-W: exponent τ of w = d^τ: a number, dynamic (CIFAR code) or "
          "dynamic-imagenet.", kind="float|str", choices=TAU_RULES, metavar="TAU|dynamic",
          reference="Sinha et al. 2022"),
    Param("cdb_floor", 0.0, "CDB-W: floor on the difficulty, so a class perfect on validation "
          "keeps a weight (0: as the reference).", at_least=0, at_most=1),
    Param("weight_reduction", "auto", "How weighted losses average: Σwℓ/Σw (weighted: cb/drw as "
          "the references) or mean(wℓ) (mean: CDB's CIFAR code); auto picks the reference's.",
          kind=str, choices=REDUCTIONS),
    Param("unimix", False, "UniMix: mix each image with a tail-favouring partner of its batch "
          "(Prior-LT).", kind=bool, reference="Xu et al. 2021"),
    Param("unimix_alpha", 0.8, "UniMix: Beta(α, α) of the wrapped mixing factor (must be < 1).",
          above=0, below=1),
    Param("unimix_tau", -0.5, "UniMix: partners drawn ∝ n^τ."),
    Param("unimix_stop", None, "UniMix: last epoch (exclusive) that mixes (default: all).",
          kind=int, at_least=0),
)
_DEFAULT = {p.name: p.default for p in LABEL_LOSS_OPTIONS}


class LabelLoss:
    """``loss(logits, targets)`` with the chosen base loss, weights and reduction; ``mix`` applies
    UniMix; ``after_epoch`` updates CALS's multipliers and CDB's difficulty."""

    def __init__(self, loss: str = _DEFAULT["loss"], label_smoothing: float = _DEFAULT["label_smoothing"],
                 alpha: float = _DEFAULT["alpha"], logit_clip: float | None = _DEFAULT["logit_clip"],
                 logit_clip_p: float = _DEFAULT["logit_clip_p"],
                 logit_clip_form: str = _DEFAULT["logit_clip_form"],
                 cals_margin: float = _DEFAULT["cals_margin"], ldam_max_m: float = _DEFAULT["ldam_max_m"],
                 ldam_s: float = _DEFAULT["ldam_s"], vs_gamma: float = _DEFAULT["vs_gamma"],
                 vs_tau: float = _DEFAULT["vs_tau"], reweight: str = _DEFAULT["reweight"],
                 cb_beta: float = _DEFAULT["cb_beta"], drw_epoch: int = _DEFAULT["drw_epoch"],
                 cdb_tau: str | float = _DEFAULT["cdb_tau"], cdb_floor: float = _DEFAULT["cdb_floor"],
                 weight_reduction: str = _DEFAULT["weight_reduction"], unimix: bool = _DEFAULT["unimix"],
                 unimix_alpha: float = _DEFAULT["unimix_alpha"], unimix_tau: float = _DEFAULT["unimix_tau"],
                 unimix_stop: int | None = _DEFAULT["unimix_stop"]):
        values = resolve(LABEL_LOSS_OPTIONS, {k: v for k, v in locals().items() if k != "self"},
                         owner="the label loss")  # types and ranges; the rules between them follow
        if values["label_smoothing"] and loss != "ce":
            raise ParamError("label_smoothing", "applies to loss ce only")
        if logit_clip is None and values["logit_clip_form"] != _DEFAULT["logit_clip_form"]:
            raise ParamError("logit_clip_form", "applies with logit_clip only")
        if loss == "cals" and (reweight != "none" or unimix):
            raise ParamError("loss", "cals does not combine with reweight or unimix")
        cdb_tau = values["cdb_tau"]
        self.loss, self.label_smoothing, self.alpha = loss, float(label_smoothing), float(alpha)
        self.logit_clip = None if logit_clip is None else float(logit_clip)
        self.logit_clip_p, self.cals_margin = float(logit_clip_p), float(cals_margin)
        self.logit_clip_form = str(values["logit_clip_form"])
        self.ldam_max_m, self.ldam_s = float(ldam_max_m), float(ldam_s)
        self.vs_gamma, self.vs_tau = float(vs_gamma), float(vs_tau)
        try:
            self.reweighting = ClassReweighting(reweight, cb_beta, drw_epoch, cdb_tau, cdb_floor,
                                                weight_reduction)
            self.unimix = UniMix(unimix_alpha, unimix_tau, unimix_stop) if unimix else None
        except ValueError as err:
            raise UserError(str(err)) from None
        self.cals: CALSMultipliers | None = None
        self.absgd: ABSGDWeighting | None = None
        self.counts: Tensor | None = None
        self.margins: Tensor | None = None

    # -- setup and schedules -------------------------------------------------------------------

    def needs_counts(self) -> bool:
        return (self.loss in COUNT_LOSSES or self.reweighting.rule in ("cb", "drw")
                or self.unimix is not None)

    def set_class_counts(self, counts: list[int] | Tensor) -> None:
        counts = torch.as_tensor(counts, dtype=torch.int64)
        if self.needs_counts() and bool((counts < 1).any()):
            raise UserError(f"every class needs a training image for loss {self.loss} / "
                            f"reweight / unimix; the counts are {counts.tolist()}")
        self.counts = counts
        if self.loss == "ldam":
            self.margins = ldam_margins(counts, self.ldam_max_m)
        self.reweighting.set_class_counts(counts)

    def set_example_weighting(self, absgd: ABSGDWeighting) -> None:
        if self.loss == "cals":
            raise ParamError("optimizer", "absgd does not combine with loss cals")
        self.absgd = absgd

    def start_epoch(self, epoch: int) -> None:
        if self.needs_counts() and self.counts is None:
            raise RuntimeError("set_class_counts must be called before training")
        if self.counts is not None:
            self.reweighting.start_epoch(epoch)
        for part in (self.unimix, self.absgd):
            if part is not None:
                part.start_epoch(epoch)

    def needs_validation(self) -> bool:
        return self.loss == "cals" or self.reweighting.needs_validation

    def missing_validation(self, param: str) -> ParamError:
        """The error for a run without the validation split that CALS or CDB-W needs; ``param``
        is the data option that would give one."""
        return ParamError(param, f"loss {self.loss} / reweight {self.reweighting.rule} needs a "
                                 f"validation split: set {param} to N")

    # -- the loss ------------------------------------------------------------------------------

    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | MixedTargets]:
        """UniMix the batch (when enabled and active this epoch), else return it as it is."""
        if self.unimix is None:
            return x, y
        assert self.counts is not None  # UniMix needs counts: set_class_counts comes first
        return self.unimix(x, y, self.counts)

    def per_example(self, logits: Tensor, y: Tensor) -> Tensor:
        """The unweighted loss of each example against integer labels ``y``."""
        if self.loss == "ldam":
            assert self.margins is not None  # set_class_counts sets them for ldam
            logits = ldam_logits(logits, y, self.margins, self.ldam_s)
        elif self.loss == "vs":
            assert self.counts is not None  # a count loss: set_class_counts comes first
            logits = vs_logits(logits, self.counts, self.vs_gamma, self.vs_tau)
        elif self.loss == "bayias":
            assert self.counts is not None  # a count loss: set_class_counts comes first
            logits = bayias_logits(logits, self.counts)
        if self.loss == "alpha":
            return alpha_loss(logits, y, self.alpha, reduction="none")
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="none")

    def __call__(self, logits: Tensor, targets: Tensor | MixedTargets) -> Tensor:
        if self.logit_clip is not None:  # training only: test-time logits stay as they are
            logits = clip_logits(logits, self.logit_clip, self.logit_clip_p, form=self.logit_clip_form)
        if self.loss == "cals":
            if self.cals is None:
                self.cals = CALSMultipliers(logits.shape[1], margin=self.cals_margin)
            assert isinstance(targets, Tensor)  # cals excludes unimix, so its batches are never mixed
            return self.cals.loss(logits, targets)
        weights = self.reweighting.current
        # A mixed batch is λ·(label a) + (1 − λ)·(label b), each label with its own class weight.
        parts: list[tuple[Tensor | None, Tensor]]
        if isinstance(targets, MixedTargets):
            lam = targets.lam.to(logits.dtype)
            parts = [(lam, targets.y_a), (1 - lam, targets.y_b)]
        else:
            parts = [(None, targets)]
        losses: Tensor | int = 0
        mass: Tensor | int = 0
        for coef, y in parts:
            w = None if weights is None else weights.to(logits)[y]
            term = self.per_example(logits, y) if w is None else w * self.per_example(logits, y)
            losses = losses + (term if coef is None else coef * term)
            if w is not None:
                mass = mass + (w if coef is None else coef * w)
        assert isinstance(losses, Tensor)  # parts is never empty
        if self.absgd is not None:  # ABSGD re-weights the class-weighted per-example losses
            return self.absgd.reduce(losses)
        if weights is not None and self.reweighting.reduction == "weighted":
            assert isinstance(mass, Tensor)  # with weights, every part added to it
            return losses.sum() / mass.sum()  # F.cross_entropy(weight=)'s mean, per mixed label
        return losses.mean()

    @torch.no_grad()
    def after_epoch(self, model: nn.Module, validation: Any, epoch: int, device: torch.device) -> None:
        """CALS: new multipliers from the validation logits (its labels are not used); CDB: the
        per-class difficulty on the validation split."""
        if not self.needs_validation():
            return
        if validation is None:
            raise self.missing_validation("val_count")
        from torch.utils.data import DataLoader

        if self.reweighting.needs_validation:
            assert self.counts is not None  # set_class_counts comes first
            self.reweighting.update(class_difficulty(model, validation, len(self.counts), device))
        if self.loss != "cals":
            return
        model.eval()
        logits = torch.cat([model(x.to(device)).float().cpu() for x, _ in DataLoader(validation, 1000)])
        if self.cals is None:
            self.cals = CALSMultipliers(logits.shape[1], margin=self.cals_margin)
        self.cals.update(logits, epoch)

    # -- resume and record ---------------------------------------------------------------------

    def epoch_metrics(self) -> dict[str, Any]:
        """CDB-W's difficulty after the epoch: it sets the next epoch's class weights."""
        d = self.reweighting.difficulty
        if self.reweighting.rule != "cdb" or d is None:
            return {}
        return {"cdb_difficulty": [round(v, 4) for v in d.tolist()]}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: CALS's outer-loop state, CDB's
        difficulty, ABSGD's running normalizer."""
        state: dict[str, Any] = {}
        if self.cals is not None:
            state |= {"lambd": self.cals.lambd, "rho": self.cals.rho, "prev": self.cals.prev_constraints}
        if self.reweighting.rule == "cdb":
            state["reweighting"] = self.reweighting.state_dict()
        if self.absgd is not None:
            state["absgd"] = self.absgd.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lambd" in state:
            self.cals = CALSMultipliers(len(state["lambd"]), margin=self.cals_margin)
            self.cals.lambd, self.cals.rho, self.cals.prev_constraints = (
                state["lambd"], state["rho"], state["prev"])
        if "reweighting" in state:
            self.reweighting.load_state_dict(state["reweighting"])
        if "absgd" in state and self.absgd is not None:
            self.absgd.load_state_dict(state["absgd"])

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"loss": self.loss}
        if self.loss == "ce" and self.label_smoothing:
            params["label_smoothing"] = self.label_smoothing
        if self.loss == "alpha":
            params["alpha"] = self.alpha if math.isfinite(self.alpha) else "inf"
        if self.loss == "cals":
            params["cals_margin"] = self.cals_margin
        if self.loss == "ldam":
            params |= {"ldam_max_m": self.ldam_max_m, "ldam_s": self.ldam_s}
        if self.loss == "vs":
            params |= {"vs_gamma": self.vs_gamma, "vs_tau": self.vs_tau}
        if self.logit_clip is not None:
            params |= {"logit_clip": self.logit_clip, "logit_clip_p": self.logit_clip_p}
            if self.logit_clip_form != _DEFAULT["logit_clip_form"]:
                params["logit_clip_form"] = self.logit_clip_form
        if self.reweighting.rule != "none":
            params |= self.reweighting.params()
        if self.unimix is not None:
            params |= {"unimix": True, **self.unimix.params()}
        return params


class WithLabelLoss(Objective):
    """Base of the objectives that hold a ``self.label_loss``: the loop's hooks (class counts and
    the validation check at set-up, ABSGD, the start and end of each epoch, the resume state) go
    to it, and LDAM asks for its cosine head."""

    label_loss: LabelLoss

    def setup(self, run: TrainingRun) -> None:
        self.label_loss.set_class_counts(run.data.class_counts)
        if self.label_loss.needs_validation() and run.data.validation is None:
            balanced = self.label_loss.loss != "cals" or run.config.data.imbalance != 1 \
                or run.config.data.balanced_val
            raise self.label_loss.missing_validation("balanced_val" if balanced else "val_count")

    def start_epoch(self, run: TrainingRun, epoch: int) -> dict[str, Any]:
        self.label_loss.start_epoch(epoch)
        return {}

    def end_epoch(self, run: TrainingRun, epoch: int) -> None:
        self.label_loss.after_epoch(run.model, run.data.validation, epoch, run.device)

    def metrics(self) -> dict[str, Any]:
        return self.label_loss.epoch_metrics()

    def reweight_examples(self, weighting: Any) -> None:
        self.label_loss.set_example_weighting(weighting)

    def arch_overrides(self) -> dict[str, Any]:
        return {"cosine_head": True} if self.label_loss.loss == "ldam" else {}  # LDAM's normed head

    def state_dict(self) -> dict[str, Any]:
        return self.label_loss.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.label_loss.load_state_dict(state)
