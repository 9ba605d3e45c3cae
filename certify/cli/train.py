"""``certify train``: train a model for certification: a smoothing base classifier (Gaussian
augmentation or SmoothMix) or an ℓ∞-distance net (the v2 mixture loss, the v1 hinge, the hybrid CE),
on balanced, long-tailed or noisy-label data.

Every option is generated from a typed parameter of the training sections
(:mod:`certify.training.config`) or of the objectives (:mod:`certify.objectives`), grouped in
--help by component; this module names no method. Recipes (``certify/recipes/*.toml``) are
published settings kept as data: ``--recipe NAME`` fills in every option the user did not type, so
an explicit flag always beats the recipe, which beats the default. The same command runs
data-parallel under ``torchrun``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from certify.cli.options import (
    command_line,
    data_dir_option,
    device_option,
    flag_error,
    param_option,
    pick_device,
)
from certify.errors import UserError
from certify.objectives import OBJECTIVES, all_options, objective_class
from certify.params import Param, ParamError
from certify.training.config import SECTIONS, TrainConfig
from certify.training.recipes import Recipe, available_recipes, load_recipe

# Set by shared options (--device, --data-dir) rather than generated.
_SHARED = ("device", "data_dir")
OBJECTIVE_OPTIONS = all_options()
SECTION_OPTIONS = {p.name: p for section in SECTIONS for p in section.options if p.name not in _SHARED}
FLAGS = {name: p.cli_flag for name, p in SECTION_OPTIONS.items()} | {
    name: p.cli_flag for name, (p, _) in OBJECTIVE_OPTIONS.items()} | {
    "device": "--device", "data_dir": "--data-dir", "objective": "--objective"}


class _GroupedCommand(click.Command):
    """--help with one heading per component, in the order the options were declared."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(param, "help_group", "Run and output"), []).append(record)
        for title, records in groups.items():
            with formatter.section(title):
                formatter.write_dl(records)


def _grouped(title: str, option: Callable[[Callable[..., Any]], Callable[..., Any]]
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``option`` with its --help heading attached."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = option(f)
        f.__click_params__[-1].help_group = title  # type: ignore[attr-defined]
        return f
    return decorate


def _parse_arch_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    options: dict[str, Any] = {}
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


def _generated_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The section options (defaults shown) and then the objectives' (default: unset, so the
    objective's own default applies and the checkpoint records only what was chosen)."""
    decorators = []
    for section in SECTIONS:
        for p in section.options:
            if p.name in _SHARED:
                continue
            option: Callable[[Callable[..., Any]], Callable[..., Any]]
            if p.kind is dict:
                option = click.option(p.cli_flag, p.name, multiple=True, callback=_parse_arch_options,
                                      metavar=p.metavar, help=p.help)
            else:
                option = param_option(p, default=p.default, help=p.help,
                                      show_default=p.default is not None)
            decorators.append(_grouped(section.title, option))
    decorators.append(_grouped("Objective", click.option(
        "--objective", type=click.Choice(list(OBJECTIVES)), default="gaussian", show_default=True,
        help="Training objective:\n\b\n" + "\n".join(
            f"{name}: {o.summary}" for name, o in OBJECTIVES.items()))))
    for p, objectives in OBJECTIVE_OPTIONS.values():
        where = "all objectives" if len(objectives) == len(OBJECTIVES) else ", ".join(objectives)
        default = "" if p.default is None else f"; default: {p.default}"
        decorators.append(_grouped("Objective", param_option(
            p, default=None, help=f"{p.help} [{where}{default}]")))
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def _list_recipes(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    names = available_recipes()
    width = max(map(len, names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {load_recipe(name).description}")
    ctx.exit(0)


def _apply_recipe(ctx: click.Context, recipe: Recipe, values: dict[str, Any]) -> set[str]:
    """Fill ``values`` from ``recipe`` wherever the user typed nothing; returns the names filled."""
    tables: dict[str, dict[str, Param | None]] = {"config": {**SECTION_OPTIONS, "objective": None},
              "objective": {name: p for name, (p, _) in OBJECTIVE_OPTIONS.items()}}
    unknown = [f"{table}.{key}" for table, known in tables.items()
               for key in getattr(recipe, table) if key not in known]
    if unknown:
        raise UserError(f"recipe {recipe.name}: keys with no train option: {', '.join(unknown)}")
    filled = set()
    for table, known in tables.items():
        for key, value in getattr(recipe, table).items():
            if ctx.get_parameter_source(key) not in (ParameterSource.DEFAULT,
                                                     ParameterSource.DEFAULT_MAP):
                continue
            param = known[key]
            if param is not None:
                try:
                    param.check(value)
                except ParamError as err:
                    raise UserError(f"recipe {recipe.name}: {table}.{key} = {value!r}: "
                                    f"{err.message}") from None
            values[key] = value
            filled.add(key)
    return filled


def _fill_from_checkpoint(ctx: click.Context, out: Path, values: dict[str, Any], filled: set[str]) -> None:
    """--resume: every option neither typed nor set by a recipe takes the value OUT was trained
    with (so a resumed run needs no flag but --resume; a typed one that differs is refused later,
    naming the difference). Where to run (--device, --data-dir) is not taken over."""
    from certify.checkpoint import load_checkpoint

    stored = load_checkpoint(out).training.get("config", {})
    untouched = [name for name in ("objective", *SECTION_OPTIONS, *OBJECTIVE_OPTIONS)
                 if name not in filled and ctx.get_parameter_source(name) is ParameterSource.DEFAULT]
    given = dict(stored.get("objective_params", {}))
    for name in untouched:
        if name in OBJECTIVE_OPTIONS:
            values[name] = given.get(name)
        elif name in stored:
            values[name] = stored[name]


def _objective_params(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The chosen objective's options that were set (plus those it always records); an option
    typed for another objective is an error."""
    objective = objective_class(values["objective"])
    own = {p.name: p for p in objective.options}
    params = {name: values[name] for name in own if values.get(name) is not None}
    params |= {name: own[name].default for name in objective.always_recorded if name not in params}
    typed = [FLAGS[name] for name in sorted(set(OBJECTIVE_OPTIONS) - set(own))
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if typed:
        verb = "does" if len(typed) == 1 else "do"
        raise UserError(f"{', '.join(typed)} {verb} not apply to --objective {objective.name}")
    missing = [FLAGS[name] for name in objective.required if name not in params]
    if missing:
        raise UserError(f"--objective {objective.name} needs {' and '.join(missing)} (pixel units), "
                        f"e.g. from --recipe fmnist-linf-v2-short")
    return params


@click.command("train", cls=_GroupedCommand)
@click.option("--recipe", metavar="NAME",
              help="Start from a published setting (see --list-recipes); flags you type override it.")
@click.option("--list-recipes", is_flag=True, expose_value=False, is_eager=True, callback=_list_recipes,
              help="List the recipes with a one-line description and exit.")
@_generated_options
@device_option
@data_dir_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint file, rewritten atomically after every epoch.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON-lines log, one object per epoch, appended (default: OUT with suffix .jsonl).")
@click.option("--resume", is_flag=True,
              help="Continue OUT where it stopped, with the settings it records (flags you type must "
                   "agree, except --epochs, --device, --workers, --data-dir, --channels-last).")
@click.option("--force", is_flag=True, help="Train OUT afresh even if it exists (its log is restarted).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def train_command(ctx: click.Context, recipe: str | None, out: Path, log_path: Path | None, resume: bool,
                  force: bool, quiet: bool, device: str, data_dir: str | None, **values: Any) -> None:
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
    from certify.training import train
    from certify.training.distributed import env_info

    if resume and force:
        raise UserError("--resume and --force contradict each other: choose one")
    filled = _apply_recipe(ctx, load_recipe(recipe), values) if recipe is not None else set()
    if out.exists() and not (resume or force):
        raise UserError(f"{out} exists: pass --resume to continue training it, --force to train it "
                        f"afresh, or choose another --out")
    if resume and out.exists():
        _fill_from_checkpoint(ctx, out, values, filled)
    log_path = log_path if log_path is not None else out.with_suffix(".jsonl")
    if force and log_path.exists():
        log_path.unlink()  # the new run's epochs must not follow the old run's
    config = TrainConfig(objective=values["objective"], objective_params=_objective_params(ctx, values),
                         device=str(pick_device(device)), data_dir=data_dir,
                         **{name: values[name] for name in SECTION_OPTIONS})
    try:
        ckpt = train(config, out, resume=resume, command=command_line(), progress=not quiet,
                     log=lambda line: click.echo(line, err=True),
                     log_path=log_path)
    except ParamError as err:
        raise flag_error(err, FLAGS) from None
    if env_info().is_main:
        click.echo(f"wrote {out} (test accuracy {ckpt.metrics.get('test_acc', float('nan')):.4f})")


COMMANDS = [train_command]
