"""``certify eval``: accuracy, calibration and set-valued prediction of a checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from certify.cli.options import data_dir_option, device_option, pick_device
from certify.errors import UserError

SHOTS_SKIPPED = "shot groups: skipped (training class counts not recorded in the checkpoint)"


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
    from certify.calibration import reliability_diagram
    from certify.checkpoint import load_checkpoint
    from certify.data import dataset_info, load_dataset
    from certify.evaluation import (certified_report, check_labels, default_class_radii,
                                    format_certified_report, format_report, predict_probabilities,
                                    report)
    from certify.fsutil import atomic_write_text
    from certify.plot import plot_format
    from certify.results import check_writable, read_results, read_sidecar, sidecar_path
    from certify.summary import check_norm

    ckpt = load_checkpoint(checkpoint)
    if k >= ckpt.num_classes:
        raise UserError(f"--k must be below the number of classes ({ckpt.num_classes}), got {k}")
    for path in (diagram, json_out, class_plot):
        if path is not None and not path.parent.is_dir():
            raise UserError(f"cannot write {path}: directory {path.parent} does not exist")
    if results_path is None:
        if class_plot is not None:
            raise UserError("--class-plot draws certified accuracy per class: it needs the "
                            "certification results of this checkpoint, --results TSV")
        if radii:
            raise UserError("--radius sets the columns of the per-class certified accuracy: it needs "
                            "--results TSV")
    if class_plot is not None:
        plot_format(class_plot)
        check_writable(class_plot)
    if many is not None and few is not None and few > many:
        raise UserError(f"--few ({few:g}) must not exceed --many ({many:g})")
    for name, value in (("--many", many), ("--few", few), *(("--radius", r) for r in radii)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
    if any(r < 0 for r in radii):
        raise UserError(f"--radius must be non-negative, got {min(radii):g}")

    counts = ckpt.training.get("class_counts")
    if counts is not None and len(counts) != ckpt.num_classes:
        raise UserError(f"{checkpoint} records {len(counts)} training class counts for "
                        f"{ckpt.num_classes} classes: a damaged checkpoint")

    results = sidecar = None
    if results_path is not None:
        results = read_results(results_path)
        sidecar = read_sidecar(results_path) or {}
        recorded = sidecar.get("checkpoint_sha256")
        if recorded and recorded != ckpt.sha256:
            raise UserError(f"{results_path} was certified with another checkpoint (its sidecar "
                            f"{sidecar_path(results_path)} records sha256 {recorded[:12]}…, "
                            f"{checkpoint} is {ckpt.sha256[:12]}…)")
        if len(results) == 0:
            raise UserError(f"{results_path} has no rows: nothing to report per class")
        check_labels(results, ckpt.num_classes)
        norm = sidecar.get("norm", "l2")
        check_norm(norm)
        radii = tuple(sorted(set(radii))) if radii else tuple(default_class_radii(results, norm))

    target = pick_device(device)
    classes = dataset_info(ckpt.dataset).classes
    classes = classes if len(classes) == ckpt.num_classes else None
    pred = predict_probabilities(ckpt.build_model(target), load_dataset(ckpt.dataset, split,
                                 data_dir=data_dir), target, batch)
    metrics = report(pred, k, class_counts=counts, many=many, few=few)
    click.echo(format_report(metrics, classes))
    if counts is None:
        click.echo(SHOTS_SKIPPED)
    cert = None
    if results is not None:
        cert = {"results": str(results_path), "split": sidecar.get("split"),
                **certified_report(results, ckpt.num_classes, radii, norm, counts, many, few)}
        click.echo(format_certified_report(cert, classes, counts))
        if class_plot is not None:
            from certify.plot import plot_per_class_certified

            plot_per_class_certified([cert["per_class"]], [checkpoint.stem], radii, class_plot,
                                     class_names=classes, class_counts=counts, norm=norm,
                                     title=f"{checkpoint.name}: certified accuracy per class")
            click.echo(f"wrote {class_plot}", err=True)
    if diagram is not None:
        confidence, predicted = pred.probs.max(1)
        reliability_diagram(confidence, predicted == pred.labels, diagram, title=checkpoint.stem)
    if json_out is not None:
        extra = {} if counts is not None else {"class_counts": None, "shots": None}
        if cert is not None:
            extra["certified"] = cert
        atomic_write_text(json_out, json.dumps({"checkpoint": str(checkpoint), "split": split,
                                                **metrics, **extra}, indent=2) + "\n")


COMMANDS = [eval_command]
