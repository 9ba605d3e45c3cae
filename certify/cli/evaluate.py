"""``certify eval``: accuracy, calibration and set-valued prediction of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click

from certify.cli.options import data_dir_option, device_option, pick_device
from certify.errors import UserError


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--k", "k", type=click.IntRange(min=1), default=2, show_default=True,
              help="Set size of top-k, and the average set size of average-k.")
@click.option("--diagram", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a reliability diagram (PNG) here.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every metric as JSON here.")
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True)
@device_option
@data_dir_option
def eval_command(checkpoint: Path, split: str, k: int, diagram: Path | None, json_out: Path | None,
                 batch: int, device: str, data_dir: str | None) -> None:
    """Accuracy, balanced and per-class accuracy, ECE and classwise ECE (15 bins), and top-k
    against average-k sets, for CHECKPOINT on a dataset split.

    Average-k's threshold comes from the split's even-indexed images; the set metrics are measured
    on the odd-indexed ones. Smoothing models are evaluated as their base classifier.

    \b
    Example:
      certify eval models/m.pt --k 2 --diagram reliability.png --json m.eval.json
    """
    from certify.calibration import reliability_diagram
    from certify.checkpoint import load_checkpoint
    from certify.data import dataset_info, load_dataset
    from certify.evaluation import format_report, predict_probabilities, report
    from certify.fsutil import atomic_write_text

    ckpt = load_checkpoint(checkpoint)
    if k >= ckpt.num_classes:
        raise UserError(f"--k must be below the number of classes ({ckpt.num_classes}), got {k}")
    for path in (diagram, json_out):
        if path is not None and not path.parent.is_dir():
            raise UserError(f"cannot write {path}: directory {path.parent} does not exist")
    target = pick_device(device)
    pred = predict_probabilities(ckpt.build_model(target), load_dataset(ckpt.dataset, split,
                                 data_dir=data_dir), target, batch)
    metrics = report(pred, k)
    click.echo(format_report(metrics, dataset_info(ckpt.dataset).classes))
    if diagram is not None:
        confidence, predicted = pred.probs.max(1)
        reliability_diagram(confidence, predicted == pred.labels, diagram, title=checkpoint.stem)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps({"checkpoint": str(checkpoint), "split": split,
                                                **metrics}, indent=2) + "\n")


COMMANDS = [eval_command]
