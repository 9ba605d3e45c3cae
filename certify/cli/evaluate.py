"""``certify eval``: accuracy, calibration and set-valued prediction of a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from certify.cli.options import data_dir_option, device_option, pick_device


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--k", "k", type=click.IntRange(min=1), default=2, show_default=True,
              help="Set size of top-k, and the average set size of average-k.")
@click.option("--diagram", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a reliability diagram (PNG) here.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every metric as JSON here.")
@click.option("--many", type=click.FloatRange(min=0), default=None, metavar="N",
              help="Many-shot classes have more than N training images "
                   "(default: n_max/5, i.e. OLTR's 100 at n_max = 500).")
@click.option("--few", type=click.FloatRange(min=0), default=None, metavar="N",
              help="Few-shot classes have fewer than N training images; the rest are medium-shot "
                   "(default: n_max/25, i.e. OLTR's 20 at n_max = 500).")
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="TSV",
              help="Certification results of 'certify run' for this checkpoint: adds certified "
                   "accuracy per class (and per shot group) to the report.")
@click.option("--radius", "radii", type=float, multiple=True, metavar="R",
              help="Radius of a per-class certified-accuracy column; repeat for more (default: 0 "
                   "and two radii spread up to the largest certified one). Needs --results.")
@click.option("--class-plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="PNG",
              help="Bar chart of certified accuracy per class, one panel per radius (.png or .pdf). "
                   "Needs --results.")
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True)
@device_option
@data_dir_option
def eval_command(checkpoint: Path, split: str, k: int, diagram: Path | None, json_out: Path | None,
                 many: float | None, few: float | None, results_path: Path | None,
                 radii: tuple[float, ...], class_plot: Path | None,
                 batch: int, device: str, data_dir: str | None) -> None:
    """Accuracy, balanced and per-class accuracy, ECE and classwise ECE (15 bins), and top-k
    against average-k sets, for CHECKPOINT on a dataset split.

    Average-k's threshold comes from the split's even-indexed images; the set metrics are measured
    on the odd-indexed ones. Smoothing models are evaluated as their base classifier.

    Long-tailed training: when CHECKPOINT records its training images per class, the report adds
    many-, medium- and few-shot accuracy (mean per-class accuracy over the classes with more than
    --many, between --few and --many inclusive, and fewer than --few training images; OLTR's
    convention, defaults scaled from its 100/20 at n_max = 500 to n_max/5 and n_max/25). Older
    checkpoints do not record the counts: the report then says the groups were skipped.

    With --results (a TSV of 'certify run' for this checkpoint, usually on the test split) the
    report adds certified accuracy per class at each --radius: the fraction of the class's rows
    certified correct with radius ≥ r, abstentions counted as failures.

    \b
    Examples:
      certify eval models/m.pt --k 2 --diagram reliability.png --json m.eval.json
      certify eval m.pt --results m.tsv --radius 0 --radius 0.25 --class-plot classes.png
    """
    from certify.evaluation import EvalSpec, format_evaluation, run_evaluation

    spec = EvalSpec(checkpoint=checkpoint, split=split, k=k, many=many, few=few,
                    results=results_path, radii=radii, diagram=diagram, json_out=json_out,
                    class_plot=class_plot, batch=batch, device=pick_device(device), data_dir=data_dir)
    click.echo(format_evaluation(run_evaluation(spec)))
    if class_plot is not None:
        click.echo(f"wrote {class_plot}", err=True)


COMMANDS = [eval_command]
