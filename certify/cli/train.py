"""``certify train``: train a model for certification: a smoothing base classifier (Gaussian
augmentation or SmoothMix) or an ℓ∞-distance net (the v2 mixture loss, the v1 hinge, the hybrid CE),
on balanced, long-tailed or noisy-label data.

Recipes (``certify/recipes/*.toml``) are published settings kept as data: ``--recipe NAME`` fills in
every option the user did not type, so an explicit flag always beats the recipe, which beats the
default. The same command runs data-parallel under ``torchrun``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from certify.cli.options import command_line, data_dir_option, device_option, pick_device, seed_option
from certify.errors import UserError
from certify.training.recipes import Recipe, available_recipes, load_recipe

# Click parameter -> (recipe table, key). Recipe keys are TrainConfig fields and objective arguments.
RECIPE_KEYS: dict[str, tuple[str, str]] = {
    "dataset": ("config", "dataset"), "arch": ("config", "arch"),
    "arch_kwargs": ("config", "arch_kwargs"), "objective": ("config", "objective"),
    "epochs": ("config", "epochs"), "batch": ("config", "batch_size"), "lr": ("config", "lr"),
    "lr_step": ("config", "lr_step_size"), "gamma": ("config", "lr_gamma"),
    "momentum": ("config", "momentum"), "weight_decay": ("config", "weight_decay"),
    "train_count": ("config", "train_count"), "eval_count": ("config", "eval_count"),
    "workers": ("config", "workers"), "seed": ("config", "seed"), "amp": ("config", "amp"),
    "channels_last": ("config", "channels_last"),
    "sigma": ("objective", "sigma"), "num_noise_vec": ("objective", "num_noise_vec"),
    "num_steps": ("objective", "num_steps"), "attack_step": ("objective", "step_size"),
    "eta": ("objective", "eta"), "mix_step": ("objective", "mix_step"),
    "warmup": ("objective", "warmup"), "maxnorm_s": ("objective", "maxnorm_s"),
    "maxnorm": ("objective", "maxnorm"),
    "optimizer": ("config", "optimizer"), "adam_beta1": ("config", "adam_beta1"),
    "adam_beta2": ("config", "adam_beta2"), "adam_eps": ("config", "adam_eps"),
    "scalar_lr": ("config", "scalar_lr"), "lr_schedule": ("config", "lr_schedule"),
    "cosine_start": ("config", "cosine_start"), "augment": ("config", "augment"),
    "eps_train": ("objective", "eps_train"), "eps_test": ("objective", "eps_test"),
    "p_start": ("objective", "p_start"), "p_end": ("objective", "p_end"),
    "p_start_epoch": ("objective", "p_start_epoch"), "p_end_epoch": ("objective", "p_end_epoch"),
    "eps_start_epoch": ("objective", "eps_start_epoch"), "eps_end_epoch": ("objective", "eps_end_epoch"),
    "lambda_start": ("objective", "lambda_start"), "lambda_end": ("objective", "lambda_end"),
    "hinge_mix": ("objective", "mix"), "kappa": ("objective", "kappa"),
    "loss": ("objective", "loss"), "label_smoothing": ("objective", "label_smoothing"),
    "alpha": ("objective", "alpha"), "logit_clip": ("objective", "logit_clip"),
    "logit_clip_p": ("objective", "logit_clip_p"), "cals_margin": ("objective", "cals_margin"),
    "label_noise": ("config", "label_noise"), "val_count": ("config", "val_count"),
    "susceptibility": ("config", "susceptibility"),
    "ldam_max_m": ("objective", "ldam_max_m"), "ldam_s": ("objective", "ldam_s"),
    "vs_gamma": ("objective", "vs_gamma"), "vs_tau": ("objective", "vs_tau"),
    "reweight": ("objective", "reweight"), "cb_beta": ("objective", "cb_beta"),
    "drw_epoch": ("objective", "drw_epoch"), "cdb_tau": ("objective", "cdb_tau"),
    "cdb_floor": ("objective", "cdb_floor"), "weight_reduction": ("objective", "weight_reduction"),
    "unimix": ("objective", "unimix"), "unimix_alpha": ("objective", "unimix_alpha"),
    "unimix_tau": ("objective", "unimix_tau"), "unimix_stop": ("objective", "unimix_stop"),
    "imbalance": ("config", "imbalance"), "imbalance_profile": ("config", "imbalance_profile"),
    "imbalance_seed": ("config", "imbalance_seed"), "balanced_val": ("config", "balanced_val"),
    "sampler": ("config", "sampler"), "sampler_tau": ("config", "sampler_tau"),
    "sampler_floor": ("config", "sampler_floor"),
    "absgd_lambda": ("config", "absgd_lambda"), "absgd_init_lambda": ("config", "absgd_init_lambda"),
    "absgd_lambda_epoch": ("config", "absgd_lambda_epoch"), "absgd_gamma": ("config", "absgd_gamma"),
    "absgd_alpha": ("config", "absgd_alpha"),
}
# Options that only SmoothMix takes: click parameter -> SmoothMix argument.
SMOOTHMIX_PARAMS = {"num_noise_vec": "num_noise_vec", "num_steps": "num_steps",
                    "attack_step": "step_size", "eta": "eta", "mix_step": "mix_step",
                    "warmup": "warmup", "maxnorm_s": "maxnorm_s", "maxnorm": "maxnorm"}
# The ℓ∞-dist objectives' schedule options, shared by all three.
LINF_PARAMS = {name: name for name in ("eps_train", "eps_test", "p_start", "p_end", "p_start_epoch",
                                       "p_end_epoch", "eps_start_epoch", "eps_end_epoch")}
# The label-loss options of the objectives that end in "logits vs labels".
LOSS_PARAMS = {name: name for name in (
    "loss", "label_smoothing", "alpha", "logit_clip", "logit_clip_p", "cals_margin", "ldam_max_m",
    "ldam_s", "vs_gamma", "vs_tau", "reweight", "cb_beta", "drw_epoch", "cdb_tau", "cdb_floor",
    "weight_reduction", "unimix", "unimix_alpha", "unimix_tau", "unimix_stop")}
# Click parameter -> argument, for each objective's own options.
OBJECTIVE_PARAMS: dict[str, dict[str, str]] = {
    "classify": LOSS_PARAMS,
    "gaussian": {"sigma": "sigma", **LOSS_PARAMS},
    "smoothmix": {"sigma": "sigma", **SMOOTHMIX_PARAMS, **LOSS_PARAMS},
    "linf_mixture": {**LINF_PARAMS, "lambda_start": "lambda_start", "lambda_end": "lambda_end"},
    "linf_hinge": {**LINF_PARAMS, "hinge_mix": "mix"},
    "linf_hybrid_ce": {**LINF_PARAMS, "kappa": "kappa"},
}


def _list_recipes(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    names = available_recipes()
    width = max(map(len, names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {load_recipe(name).description}")
    ctx.exit(0)


class _ObjectiveOption(click.Option):
    """--objective, whose help lists the registered objectives (imported only when help is shown)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from certify.objectives import available_objectives

        self.help = f"Training objective: {', '.join(available_objectives())}."
        return super().get_help_record(ctx)


def _parse_arch_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            options[key] = int(value)
        except ValueError:
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = value
    return options


def _apply_recipe(ctx: click.Context, recipe: Recipe, values: dict[str, Any]) -> None:
    """Fill ``values`` from ``recipe`` wherever the user typed nothing (the default stands otherwise)."""
    params = {p.name: p for p in ctx.command.params}
    settable = set(RECIPE_KEYS.values())
    unknown = [f"{table}.{key}" for table in ("config", "objective")
               for key in getattr(recipe, table) if (table, key) not in settable]
    if unknown:
        raise UserError(f"recipe {recipe.name}: keys with no train option: {', '.join(unknown)}")
    for name, (table, key) in RECIPE_KEYS.items():
        source = ctx.get_parameter_source(name)
        table_values = getattr(recipe, table)
        if key not in table_values or source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            continue
        value = table_values[key]
        if name == "arch_kwargs":
            if not isinstance(value, dict):
                raise UserError(f"recipe {recipe.name}: config.arch_kwargs must be a table")
        else:
            try:
                value = params[name].type_cast_value(ctx, value)
            except click.BadParameter as err:
                raise UserError(f"recipe {recipe.name}: {table}.{key} = {value!r}: "
                                f"{err.format_message()}") from None
        values[name] = value


def _objective_params(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The chosen objective's options (None: its default); an option typed for another: an error."""
    objective = values["objective"]
    own = OBJECTIVE_PARAMS.get(objective, {"sigma": "sigma"})
    params = {arg: values[name] for name, arg in own.items() if values[name] is not None}
    everything = {name for names in OBJECTIVE_PARAMS.values() for name in names}
    typed = [f"--{name.replace('_', '-')}" for name in sorted(everything - set(own))
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if typed:
        verb = "does" if len(typed) == 1 else "do"
        raise UserError(f"{', '.join(typed)} {verb} not apply to --objective {objective}")
    if objective.startswith("linf_") and ("eps_train" not in params or "eps_test" not in params):
        raise UserError(f"--objective {objective} needs --eps-train and --eps-test (pixel units), "
                        f"e.g. from --recipe fmnist-linf-v2-short")
    return params


@click.command("train")
@click.option("--recipe", metavar="NAME",
              help="Start from a published setting (see --list-recipes); flags you type override it.")
@click.option("--list-recipes", is_flag=True, expose_value=False, is_eager=True, callback=_list_recipes,
              help="List the recipes with a one-line description and exit.")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, mnist or cifar10.")
@click.option("--arch", default="lenet", show_default=True,
              help="lenet (28×28), small_cnn, cifar_resnet20, cifar_resnet110, linf_dist_net, "
                   "linf_dist_hybrid.")
@click.option("--arch-opt", "arch_kwargs", multiple=True, callback=_parse_arch_options,
              metavar="KEY=VALUE", help="Architecture option, e.g. --arch-opt width=8 for small_cnn.")
@click.option("--objective", cls=_ObjectiveOption, default="gaussian", show_default=True,
              help="Training objective.")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), default=0.25, show_default=True,
              help="Smoothing objectives: noise level σ in [0,1] pixel units; certify with the same σ.")
@click.option("--epochs", type=click.IntRange(min=1), default=90, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per optimizer step in each process. Under torchrun with K processes a step "
                   "sees K×batch images (the global batch): to keep a single-process recipe's "
                   "hyperparameters, divide --batch by K; to keep --batch, scale --lr by about K.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True)
@click.option("--lr-step", type=click.IntRange(min=1), default=30, show_default=True,
              help="Multiply the learning rate by --gamma every this many epochs.")
@click.option("--gamma", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--num-noise-vec", type=click.IntRange(min=1), default=1, show_default=True,
              help="SmoothMix m: noise draws per image; each batch is split into m optimizer steps.")
@click.option("--num-steps", type=click.IntRange(min=1), default=8, show_default=True,
              help="SmoothMix T: ascent steps of the attack on the smoothed classifier.")
@click.option("--attack-step", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="SmoothMix attack step size (ℓ2, pixel units; the reference's --alpha).")
@click.option("--eta", type=click.FloatRange(0), default=1.0, show_default=True,
              help="SmoothMix weight η of the mixup term.")
@click.option("--mix-step", type=click.IntRange(min=0), default=0, show_default=True,
              help="SmoothMix: attack step whose point replaces x (0: x; 1: the one-step adversary).")
@click.option("--warmup", type=click.IntRange(min=1), default=10, show_default=True,
              help="SmoothMix: epochs over which η and the --mix-step radius ramp up.")
@click.option("--maxnorm-s", type=click.FloatRange(0), default=None,
              help="SmoothMix: ℓ2 radius for the --mix-step point (default: attack-step × mix-step).")
@click.option("--maxnorm", type=click.FloatRange(0, min_open=True), default=None,
              help="SmoothMix: ℓ2 ball for the attack (default: none, only the [0,1] clamp).")
@click.option("--eps-train", type=click.FloatRange(0, min_open=True), default=None,
              help="ℓ∞ nets: training ε in pixel units (the hinge threshold is θ = 2ε).")
@click.option("--eps-test", type=click.FloatRange(0, min_open=True), default=None,
              help="ℓ∞ nets: the ε whose certified accuracy is logged each epoch at p = ∞.")
@click.option("--p-start", type=click.FloatRange(min=1), default=None,
              help="ℓ∞ nets: initial p of the ℓp relaxation (default 8).")
@click.option("--p-end", type=click.FloatRange(min=1), default=None,
              help="ℓ∞ nets: p reached at --p-end-epoch, then ∞ if ≥ 100 (default 1000).")
@click.option("--p-start-epoch", type=click.FloatRange(min=0), default=None,
              help="ℓ∞ nets: epoch where p starts growing geometrically (v2 CIFAR: 100).")
@click.option("--p-end-epoch", type=click.FloatRange(min=0), default=None,
              help="ℓ∞ nets: epoch where p reaches --p-end and switches to ∞ (v2 CIFAR: 1250).")
@click.option("--eps-start-epoch", type=click.FloatRange(min=0), default=None,
              help="ℓ∞ nets: start of a linear ε ramp (default none: ε from the start).")
@click.option("--eps-end-epoch", type=click.FloatRange(min=0), default=None,
              help="ℓ∞ nets: end of the linear ε ramp.")
@click.option("--lambda-start", type=click.FloatRange(0, min_open=True), default=None,
              help="linf_mixture: initial weight λ of the scaled cross-entropy (default 0.05).")
@click.option("--lambda-end", type=click.FloatRange(0, min_open=True), default=None,
              help="linf_mixture: final λ, reached with p (default 0.0002).")
@click.option("--hinge-mix", type=click.FloatRange(0, 1), default=None,
              help="linf_hinge: weight of the max-over-classes hinge against the mean (default 0.75).")
@click.option("--kappa", type=click.FloatRange(0, 1), default=None,
              help="linf_hybrid_ce: weight κ of the worst-case cross-entropy (default 1).")
@click.option("--loss", type=click.Choice(["ce", "alpha", "cals", "ldam", "vs", "bayias"]), default=None,
              help="classify/gaussian/smoothmix: the loss on the (noisy) logits: cross-entropy (default), the α-loss "
                   "(--alpha), CALS (needs --val-count), or for long-tailed data LDAM (cosine head, "
                   "s = 30), VS or Bayias (= logit adjustment with τ = 1).")
@click.option("--ldam-max-m", type=click.FloatRange(0, min_open=True), default=None,
              help="LDAM: the rarest class's margin (default 0.5; margins ∝ n^(-1/4)).")
@click.option("--ldam-s", type=click.FloatRange(0, min_open=True), default=None,
              help="LDAM: logit scale s (default 30).")
@click.option("--vs-gamma", type=float, default=None,
              help="VS: γ of the multiplicative Δ_j = (n_j/n_max)^γ (default 0.3; 0 gives LA).")
@click.option("--vs-tau", type=float, default=None,
              help="VS: τ of the additive ι_j = τ·log π_j (default 1.0; 0 gives CDT).")
@click.option("--reweight", type=click.Choice(["none", "cb", "drw", "cdb"]), default=None,
              help="Per-class loss weights: class-balanced (cb, β = --cb-beta) from the start, the "
                   "same deferred to --drw-epoch (drw), or CDB-W from validation difficulty (cdb, "
                   "needs --balanced-val).")
@click.option("--cb-beta", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="cb/drw: β of the effective number (default 0.9999).")
@click.option("--drw-epoch", type=click.IntRange(min=0), default=None,
              help="drw: first epoch (0-based) with class-balanced weights (default 160, of 200).")
@click.option("--cdb-tau", default=None, metavar="TAU|dynamic",
              help="CDB-W: exponent τ of w = d^τ: a number, dynamic (CIFAR code, default) or "
                   "dynamic-imagenet.")
@click.option("--cdb-floor", type=click.FloatRange(0, 1), default=None,
              help="CDB-W: floor on the difficulty, so a class perfect on validation keeps a "
                   "weight (default 0, as the reference).")
@click.option("--weight-reduction", type=click.Choice(["auto", "weighted", "mean"]), default=None,
              help="How weighted losses average: Σwℓ/Σw (weighted: cb/drw as the references) or "
                   "mean(wℓ) (mean: CDB's CIFAR code); auto picks the reference's.")
@click.option("--unimix", is_flag=True, default=None,
              help="UniMix: mix each image with a tail-favouring partner of its batch (Prior-LT).")
@click.option("--unimix-alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="UniMix: Beta(α, α) of the wrapped mixing factor (default 0.8; must be < 1).")
@click.option("--unimix-tau", type=float, default=None,
              help="UniMix: partners drawn ∝ n^τ (default -0.5).")
@click.option("--unimix-stop", type=click.IntRange(min=0), default=None,
              help="UniMix: last epoch (exclusive) that mixes (default: all).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="--loss ce: label smoothing ε.")
@click.option("--alpha", type=click.FloatRange(0, min_open=True), default=None,
              help="--loss alpha: α (1 = CE, ½ exponential, inf = 1 − p_y; > 1 for noisy labels).")
@click.option("--logit-clip", type=click.FloatRange(0, min_open=True), default=None,
              help="LogitClip: clamp the logit vector's p-norm to τ before the loss (training only).")
@click.option("--logit-clip-p", type=click.FloatRange(1), default=None,
              help="LogitClip: the norm's p (default 2).")
@click.option("--cals-margin", type=click.FloatRange(0, min_open=True), default=None,
              help="CALS: the logit-distance margin m (default 10).")
@click.option("--label-noise", default="none", show_default=True, metavar="none|KIND:RATE",
              help="Corrupt the training labels, e.g. symmetric:0.4 (flip to another class) or "
                   "asymmetric:0.4 (class pairs); the test labels stay clean.")
@click.option("--val-count", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hold out the last N training images as a validation split (CALS, susceptibility).")
@click.option("--imbalance", type=click.FloatRange(min=1), default=1.0, show_default=True,
              metavar="RHO",
              help="Train on a long-tailed view: class i keeps n_max·RHO^(-i/(C-1)) images (class 0 "
                   "the head; LDAM-DRW's generator); the test split stays balanced. 1: off.")
@click.option("--imbalance-profile", type=click.Choice(["exp", "step"]), default="exp",
              show_default=True, help="exp: the profile above; step: half the classes keep n_max/RHO.")
@click.option("--imbalance-seed", type=int, default=0, show_default=True,
              help="Seed choosing which images the long-tailed view keeps.")
@click.option("--balanced-val", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hold out N images per class, before the imbalance, as a balanced validation "
                   "split (CDB-W, CDB-S; CDB's protocol uses 25).")
@click.option("--sampler", type=click.Choice(["none", "class-balanced", "cdb"]), default="none",
              show_default=True,
              help="Draw each epoch's images with replacement: class-balanced (LDAM's Resample) or "
                   "cdb (CDB-S, classes ∝ validation difficulty^τ; needs --balanced-val).")
@click.option("--sampler-tau", default="dynamic", show_default=True, metavar="TAU|dynamic",
              help="CDB-S: exponent τ (a number, dynamic or dynamic-imagenet).")
@click.option("--sampler-floor", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="CDB-S: floor on the difficulty, so a class perfect on validation is still drawn "
                   "(0: the paper's rule).")
@click.option("--susceptibility", type=click.IntRange(min=0), default=0, show_default=True,
              help="Log the susceptibility ζ each epoch, on N held-out images with random labels "
                   "(the paper: 128; 0: off).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "absgd"]), default="sgd", show_default=True,
              help="SGD (smoothing references), Adam (ℓ∞-dist references) or ABSGD: momentum SGD on "
                   "per-example weights ∝ exp(loss/λ) (classify, gaussian, smoothmix).")
@click.option("--absgd-lambda", type=float, default=1.0, show_default=True,
              help="ABSGD: λ from --absgd-lambda-epoch on; > 0 up-weights hard examples "
                   "(imbalance), < 0 down-weights them (noisy labels).")
@click.option("--absgd-init-lambda", type=float, default=10.0, show_default=True,
              help="ABSGD: λ before --absgd-lambda-epoch (≥ 200: plain SGD, the two-stage schedule).")
@click.option("--absgd-lambda-epoch", type=click.IntRange(min=0), default=160, show_default=True,
              help="ABSGD: epoch (0-based) at which λ switches.")
@click.option("--absgd-gamma", type=click.FloatRange(0, 1, min_open=True), default=0.1,
              show_default=True, help="ABSGD: moving-average rate γ of the normalizer.")
@click.option("--absgd-alpha", type=click.FloatRange(0, min_open=True), default=0.5, show_default=True,
              help="ABSGD: α scaling the normalizer.")
@click.option("--adam-beta1", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True)
@click.option("--adam-beta2", type=click.FloatRange(0, 1, max_open=True), default=0.999,
              show_default=True)
@click.option("--adam-eps", type=click.FloatRange(0, min_open=True), default=1e-8, show_default=True)
@click.option("--scalar-lr", type=click.FloatRange(0, min_open=True), default=None,
              help="lr of the v2 net's learnable logit scale (the reference's 0.006; default --lr).")
@click.option("--lr-schedule", type=click.Choice(["step", "cosine"]), default="step", show_default=True,
              help="step: ×--gamma every --lr-step epochs; cosine: per minibatch down to 0 at the end.")
@click.option("--cosine-start", type=click.IntRange(min=0), default=0, show_default=True,
              help="Epochs at the initial lr before the cosine starts (v1 ℓ∞ schedule).")
@click.option("--augment", type=click.Choice(["dataset", "none", "crop-zero", "crop-edge"]),
              default="dataset", show_default=True,
              help="Training augmentation: the dataset's standard one, none, or the ℓ∞-dist nets' "
                   "random crops: v1 zero-padded (crop-zero), v2 edge-padded (crop-edge).")
@click.option("--train-count", type=click.IntRange(min=1), default=None,
              help="Train on the first N training images only (short budgets).")
@click.option("--eval-count", type=click.IntRange(min=1), default=None,
              help="Evaluate each epoch on the first N test images (default: all).")
@click.option("--amp", type=click.Choice(["off", "bf16"]), default="off", show_default=True,
              help="bf16: autocast the training forward and loss to bfloat16 (evaluation stays fp32).")
@click.option("--channels-last/--no-channels-last", default=False, show_default=True,
              help="Keep the model and its inputs in channels_last (NHWC) memory format.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (per process under torchrun).")
@seed_option
@device_option
@data_dir_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint file, rewritten atomically after every epoch.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON-lines log, one object per epoch, appended (default: OUT with suffix .jsonl).")
@click.option("--resume", is_flag=True,
              help="Continue OUT where it stopped (same settings; --epochs may grow).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def train_command(ctx: click.Context, recipe: str | None, out: Path, log_path: Path | None, resume: bool,
                  quiet: bool, device: str, data_dir: str | None, **values: Any) -> None:
    """Train a model that 'certify run' can certify.

    Defaults are those of the randomized-smoothing reference (SGD, lr 0.1, momentum 0.9, weight
    decay 1e-4, lr ×0.1 every 30 epochs, batch 256). ℓ∞-distance nets (--arch linf_dist_net,
    linf_dist_hybrid) train with an --objective linf_*, Adam and a per-minibatch p schedule: start
    from a recipe (--list-recipes). The checkpoint records the architecture, data, normalization,
    certificate and this command line; OUT.jsonl gets one line of metrics per epoch.

    Long-tailed data: --imbalance RHO (with --balanced-val N for CDB) and the methods --loss ldam /
    vs / bayias, --reweight cb / drw / cdb, --sampler, --unimix, --optimizer absgd; they compose
    with the classify, gaussian and smoothmix objectives (start from --recipe fmnist-lt100-short).

    Under 'torchrun --nproc_per_node=K' (one process per GPU, or CPU processes with gloo) the same
    command trains data-parallel: each process takes --batch images per step (global batch K×batch),
    rank 0 evaluates, logs and writes OUT.

    \b
    Examples:
      certify train --dataset fashion-mnist --arch lenet --sigma 0.25 --epochs 10 --out m.pt
      certify train --recipe fmnist-smoothmix-s0.5-short --out sm.pt
      certify train --recipe cifar10-smoothmix-s0.5 --data-dir ~/cifar --out c.pt
      certify train --recipe fmnist-linf-v2-short --out linf.pt
      certify train --recipe fmnist-lt100-short --loss ldam --reweight drw --drw-epoch 24 --out lt.pt
      torchrun --nproc_per_node=4 -m certify.cli train --recipe cifar10-gaussian-s0.5 --batch 64 \\
          --data-dir ~/cifar --out c.pt
    """
    from certify.training import TrainConfig, train
    from certify.training.distributed import env_info

    if recipe is not None:
        _apply_recipe(ctx, load_recipe(recipe), values)
    if out.exists() and not resume:
        raise UserError(f"{out} exists: pass --resume to continue training it, or choose another --out")
    config = TrainConfig(
        dataset=values["dataset"], arch=values["arch"], arch_kwargs=values["arch_kwargs"],
        objective=values["objective"], objective_params=_objective_params(ctx, values),
        epochs=values["epochs"], batch_size=values["batch"], lr=values["lr"],
        optimizer=values["optimizer"], adam_beta1=values["adam_beta1"],
        adam_beta2=values["adam_beta2"], adam_eps=values["adam_eps"], scalar_lr=values["scalar_lr"],
        lr_schedule=values["lr_schedule"], cosine_start=values["cosine_start"],
        augment=values["augment"], label_noise=values["label_noise"], val_count=values["val_count"],
        imbalance=values["imbalance"], imbalance_profile=values["imbalance_profile"],
        imbalance_seed=values["imbalance_seed"], balanced_val=values["balanced_val"],
        sampler=values["sampler"], sampler_tau=values["sampler_tau"],
        sampler_floor=values["sampler_floor"],
        absgd_lambda=values["absgd_lambda"], absgd_init_lambda=values["absgd_init_lambda"],
        absgd_lambda_epoch=values["absgd_lambda_epoch"], absgd_gamma=values["absgd_gamma"],
        absgd_alpha=values["absgd_alpha"],
        susceptibility=values["susceptibility"],
        momentum=values["momentum"], weight_decay=values["weight_decay"], lr_step_size=values["lr_step"],
        lr_gamma=values["gamma"], train_count=values["train_count"], eval_count=values["eval_count"],
        seed=values["seed"], workers=values["workers"], device=str(pick_device(device)),
        data_dir=data_dir, amp=values["amp"], channels_last=values["channels_last"])
    ckpt = train(config, out, resume=resume, command=command_line(), progress=not quiet,
                 log=lambda line: click.echo(line, err=True),
                 log_path=log_path if log_path is not None else out.with_suffix(".jsonl"))
    if env_info().is_main:
        click.echo(f"wrote {out} (test accuracy {ckpt.metrics.get('test_acc', float('nan')):.4f})")


COMMANDS = [train_command]
