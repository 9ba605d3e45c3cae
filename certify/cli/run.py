"""``certify run`` and ``certify merge``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from certify.cli.options import (
    command_line,
    data_dir_option,
    device_option,
    flag_error,
    param_option,
    pick_device,
    seed_option,
)
from certify.errors import UserError


def _parse_shard(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None or value == "auto":  # auto: certify.distributed_run reads the launcher's variables
        return value
    try:
        index, parts = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 0/4, got {value!r}") from None
    if not (parts >= 1 and 0 <= index < parts):
        raise click.BadParameter(f"I/N needs 0 ≤ I < N, got {value}")
    return index, parts


def _method_options(command: Callable[..., None]) -> Callable[..., None]:
    """One click option per method option (generated from the registry; the CLI names no method)."""
    from certify.methods import METHODS, all_options

    for option, methods in reversed(all_options().values()):
        default = "see help" if option.default is None else option.default
        where = "all methods" if len(methods) == len(METHODS) else ", ".join(methods)
        command = param_option(option, default=None,
                               help=f"{option.help} [{where}; default: {default}]")(command)
    return command


def _methods_epilog() -> str:
    from certify.methods import METHODS

    width = max(len(name) for name in METHODS)
    lines = [f"  {m.name:<{width}}  [{', '.join(m.kinds)}] {m.summary}" for m in METHODS.values()]
    return "\b\nMethods (--method):\n" + "\n".join(lines)


def _method_names() -> list[str]:
    from certify.methods import METHODS

    return list(METHODS)


@click.command("run", epilog=_methods_epilog())
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Results TSV (idx label predict radius correct time, then the method's own "
                   "columns), one row per example, plus OUT.json with the settings.")
@click.option("--method", "-m", type=click.Choice(_method_names()), default=None,
              help="How to certify (listed below). Default: the first that accepts the checkpoint: "
                   "cohen for smoothing, linf-bounds for ℓ∞-dist nets.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--skip", type=click.IntRange(min=1), default=1, show_default=True,
              help="Certify every K-th example (index 0, K, 2K, ...). The papers use 20 on CIFAR-10.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Number of examples to certify (default: all selected).")
@_method_options
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Inputs per forward pass (noisy copies for smoothing, images for ℓ∞-dist nets). "
                   "On the CPU cohen's rows do not depend on it for inputs of a multiple of 16 values "
                   "(every built-in dataset), so --resume accepts another value; on a GPU cohen's "
                   "noise stream does, so --resume and merge require the same value. sequential's "
                   "rows never depend on it.")
@seed_option
@click.option("--resume", is_flag=True, help="Continue an interrupted OUT without repeating a row.")
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.")
@click.option("--shard", callback=_parse_shard, default=None, metavar="I/N|auto",
              help="Certify only shard I of N (0 ≤ I < N); 'certify merge' joins the shards. 'auto': "
                   "the shard of this torchrun rank or SLURM array task, written to OUT's part "
                   "file (torchrun's rank 0 then merges the parts into OUT; see docs/distributed.md).")
@click.option("--dataset", default=None,
              help="Only for reference checkpoints ({'arch','state_dict'}) and torch.export or "
                   "TorchScript files: their dataset (cifar10, "
                   "imagenet, ..., or folder:PATH for any folder of class sub-folders of images).")
@click.option("--input-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only for --dataset folder:PATH: resize the shorter side to round(N·256/224), then "
                   "centre-crop N×N (default 224, ImageNet's 256/224).")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), default=None,
              help="Noise level σ; required for reference checkpoints and torch.export or "
                   "TorchScript files, otherwise overrides the "
                   "training σ recorded in the checkpoint, or smooths a model trained without "
                   "noise (--objective classify: the undefended baseline).")
@device_option
@data_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
def run_command(checkpoint: Path, out: Path, method: str | None, split: str, skip: int,
                count: int | None, batch: int, seed: int, resume: bool, force: bool,
                shard: tuple[int, int] | str | None, dataset: str | None, input_size: int | None,
                sigma: float | None, device: str,
                data_dir: str | None, quiet: bool, **method_options: object) -> None:
    """Certify CHECKPOINT on a dataset split: a prediction and a certified radius per example.

    The checkpoint knows its architecture, dataset, normalization and certificate, so no flag
    repeats them. Smoothing models get an ℓ2 radius by Monte Carlo: 'cohen' (the default) takes
    --n samples per image as the reference does, 'sequential' stops each image as soon as the
    radii in --radii are decided (same guarantee; ~10× fewer samples on our σ = 0.25 model, fewer
    savings the larger the largest radius asked for is in units of σ). ℓ∞-dist nets get a
    deterministic ℓ∞ radius in batches of --batch images (--bound). Each method refuses the
    options of the others. Rows are written and flushed one at a time; an interrupted run
    continues with --resume.

    \b
    Examples:
      certify run models/m.pt --out m.tsv --skip 20 --n 100000   # the papers' 500 CIFAR-10 images
      certify run models/m.pt --out m.tsv --skip 20 --method sequential --radii 0.25,0.5,0.75
      certify run m.pt --out part0.tsv --shard 0/2 & certify run m.pt --out part1.tsv --shard 1/2
      certify merge part0.tsv part1.tsv --out m.tsv
      torchrun --standalone --nproc-per-node 4 -m certify -- run m.pt --out m.tsv --shard auto  # 4 GPUs
      certify run models/fmnist-linf-v2-short.pt --out linf.tsv      # ℓ∞-dist net, all 10000
    """
    from certify.methods import OptionError, RunContext
    from certify.runner import RunSpec, run_certification

    if resume and force:
        raise UserError("--resume and --force contradict each other: choose one")
    auto = shard == "auto"
    spec = RunSpec(checkpoint=checkpoint, out=out, split=split, skip=skip, count=count,
                   shard=None if isinstance(shard, str) else shard,
                   resume=resume, force=force, dataset=dataset, input_size=input_size, sigma=sigma,
                   data_dir=Path(data_dir) if data_dir else None, method=method,
                   options=method_options,
                   context=RunContext(device=pick_device(device), batch_size=batch, seed=seed),
                   command=command_line())
    try:
        if auto:
            from certify.distributed_run import run_auto

            shown, merge_hint = run_auto(spec, progress=not quiet)
        else:
            shown, merge_hint = run_certification(spec, progress=not quiet), None
    except OptionError as err:
        from certify.methods import all_options

        flags = {name: option.cli_flag for name, (option, _) in all_options().items()}
        raise flag_error(err, flags) from None
    if shown is not None and not quiet:
        _print_summary([shown])
    if merge_hint:
        click.echo(f"when every array task has finished, merge the parts:\n  {merge_hint}", err=True)


@click.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.")
@click.option("--allow-incomplete", is_flag=True,
              help="Merge interrupted shards too (the merged sidecar then says complete: false).")
def merge_command(shards: tuple[Path, ...], out: Path, force: bool, allow_incomplete: bool) -> None:
    """Join the TSV files of 'certify run --shard' into the rows of one run (sorted by index).

    The shards must be 0/N .. N-1/N of one run: their sidecars must agree on every setting.
    """
    from certify.runner import merge_runs

    if out.exists() and not force:
        raise UserError(f"{out} exists: pass --force to overwrite it, or choose another --out")
    merge_runs(list(shards), out, allow_incomplete=allow_incomplete)
    _print_summary([out])


def _predict_command() -> click.Command:
    """``certify predict``: ``certify run --method predict`` with only the options predict takes."""
    from certify.methods import METHODS, all_options

    others = set(all_options()) - {option.name for option in METHODS["predict"].options}
    params = [p for p in run_command.params if p.name != "method" and p.name not in others]
    assert run_command.callback is not None
    return click.Command(
        "predict", params=params, callback=functools.partial(run_command.callback, method="predict"),
        help="""Predict with CHECKPOINT's smoothed classifier, abstaining when unsure.

        Each example gets --n noisy votes; the top class is returned when the two-sided binomial
        test of its votes against the runner-up's rejects at --alpha (Hung & Fithian), otherwise
        the row abstains (predict -1). With probability ≥ 1 − α a prediction is g(x). Rows are
        those of 'certify run' with radius 0 and a pvalue column, as the reference's predict.py
        (whose README uses --n 1000); the same as 'certify run --method predict'.

        \b
        Example:
          certify predict models/m.pt --out m.predict.tsv --skip 20 --n 1000
        """)


def _print_summary(paths: list[Path]) -> None:
    from certify.results import read_results, read_sidecar
    from certify.summary import default_radii, summary_table

    results = [read_results(p) for p in paths]
    sidecar = read_sidecar(paths[0]) or {}
    if sidecar.get("method") == "predict":
        rows = results[0]
        accuracy = float(rows.correct.mean()) if len(rows) else 0.0
        abstained = float((rows.predict < 0).mean()) if len(rows) else 0.0
        click.echo(f"smoothed classifier on {len(rows)} examples: accuracy {accuracy:.3f}, "
                   f"abstained {abstained:.1%} (N = {sidecar.get('n')}, α = {sidecar.get('alpha')})")
        return
    norm = sidecar.get("norm", "l2")
    click.echo(f"certified accuracy at {'ℓ∞' if norm == 'linf' else 'ℓ2'} radius r (pixel units):")
    click.echo(summary_table(results, [str(p) for p in paths], default_radii(results, norm)))
    if "estimation_samples" in sidecar and len(results[0]):
        passes = (sidecar["estimation_samples"] + sidecar["selection_samples"]) / len(results[0])
        full = sidecar["n0"] + sidecar["n"]
        click.echo(f"forward passes per image: {passes:,.0f} on average, against {full:,} for cohen "
                   f"at the same N ({full / passes:.1f}× fewer)")


predict_command = _predict_command()

COMMANDS = [run_command, merge_command, predict_command]
