"""``certify quickstart``: the whole pipeline on Fashion-MNIST in a few minutes on a laptop CPU.

Reuses the shipped checkpoint under ``models/`` when it is there (or trains one), certifies a few
hundred test images with randomized smoothing, and ends with a certified-accuracy plot and a table.
Every step is resumable, so running it again finishes or reuses what is already on disk.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import cast

import click

from certify.cli.options import command_line, data_dir_option, device_option, pick_device, seed_option

SHIPPED_MODEL = Path("models/fashion-mnist-lenet-sigma0.25.pt")
# The training budget of the shipped model (its command is in models/README.md); --retrain uses it.
QUICK_TRAIN = {"dataset": "fashion-mnist", "arch": "lenet", "epochs": 10, "lr": 0.05,
               "lr_step_size": 4}


@click.command("quickstart")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("quickstart-out"), show_default=True,
              help="Where the results go (not under version control; rerunning reuses them).")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=SHIPPED_MODEL,
              show_default=True, help="Checkpoint to certify; trained first if it does not exist.")
@click.option("--retrain", is_flag=True,
              help="Train a fresh model into OUT_DIR/model.pt even if --model exists.")
@click.option("--epochs", type=click.IntRange(min=1), default=QUICK_TRAIN["epochs"], show_default=True,
              help="Epochs when a model is trained (about 30 s each on 2 CPU cores).")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), default=0.25, show_default=True,
              help="Noise level when a model is trained.")
@click.option("--count", type=click.IntRange(min=1), default=300, show_default=True,
              help="Test images to certify, spread evenly over the test set.")
@click.option("--method", type=click.Choice(["sequential", "cohen"]), default="sequential",
              show_default=True,
              help="sequential stops each image once the table's radii are decided; cohen takes all "
                   "--n samples for every image (the papers' procedure, ~10× slower).")
@click.option("--n", "n", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Monte-Carlo samples per image (sequential: at most), as in the papers.")
@click.option("--n0", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.001,
              show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True)
@seed_option
@device_option
@data_dir_option
def quickstart_command(out_dir: Path, model: Path, retrain: bool, epochs: int, sigma: float, count: int,
                       method: str, n: int, n0: int, alpha: float, batch: int, seed: int, device: str,
                       data_dir: str | None) -> None:
    """Train (or reuse) a Fashion-MNIST model, certify test images, plot certified accuracy.

    \b
    Writes into OUT_DIR:
      certify.tsv, certify.tsv.json   one row per image: prediction, certified ℓ2 radius
      certified_accuracy.png          certified accuracy vs radius
      table.md                        the same numbers as a Markdown table (also printed)
    """
    from certify.data import load_dataset
    from certify.methods import RunContext
    from certify.plot import PlotSpec, make_plot
    from certify.results import read_results, read_sidecar
    from certify.runner import ResumeMismatch, RunSpec, run_certification

    torch_device = pick_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if retrain or not model.exists():
        model = out_dir / "model.pt"
        _train(model, epochs, sigma, seed, torch_device, data_dir, fresh=retrain)
    else:
        click.echo(f"[1/3] using the trained model {model} ('certify info {model}' shows how it was made)",
                   err=True)

    total = len(cast(Sized, load_dataset("fashion-mnist", "test", data_dir=data_dir)))
    skip = max(1, total // count)
    tsv = out_dir / "certify.tsv"
    click.echo(f"[2/3] certifying {count} test images (one in {skip}), method {method}, N={n}, "
               f"α={alpha} → {tsv}", err=True)
    spec = RunSpec(checkpoint=model, out=tsv, skip=skip, count=count, resume=True,
                   data_dir=Path(data_dir) if data_dir else None, method=method,
                   options={"n0": n0, "n": n, "alpha": alpha},
                   context=RunContext(device=torch_device, batch_size=batch, seed=seed),
                   command=command_line())
    try:
        run_certification(spec)
    except ResumeMismatch:
        click.echo(f"      {tsv} came from other settings; starting it afresh", err=True)
        spec.resume, spec.force = False, True
        run_certification(spec)

    images = len(read_results(tsv))
    png, table_md = out_dir / "certified_accuracy.png", out_dir / "table.md"
    table = make_plot(PlotSpec(results=[tsv], out=png, labels=[f"{model.stem} ({method}, N={n})"],
                               title=f"Fashion-MNIST, randomized smoothing ({method}), "
                                     f"{images} test images", table_out=table_md))
    click.echo(f"[3/3] wrote {png} and {table_md}\n", err=True)
    click.echo(table, nl=False)
    sidecar = read_sidecar(tsv)
    assert sidecar is not None  # run_certification wrote it (or a resumed run had one)
    samples = sidecar.get("estimation_samples")
    if samples is not None:
        passes = n0 + samples / images
        click.echo(f"\nforward passes per image: {passes:,.0f} on average, against cohen's N0 + N = "
                   f"{n0 + n:,}: {(n0 + n) / passes:.1f}× fewer")


def _train(path: Path, epochs: int, sigma: float, seed: int, device, data_dir: str | None,
           fresh: bool) -> None:
    from certify.training import TrainConfig, train

    if fresh and path.exists():
        path.unlink()
    config = TrainConfig(**{**QUICK_TRAIN, "epochs": epochs}, objective_params={"sigma": sigma},
                         seed=seed, device=str(device), data_dir=data_dir)
    click.echo(f"[1/3] training lenet on Fashion-MNIST with σ={sigma} for {epochs} epochs → {path}",
               err=True)
    train(config, path, resume=True, command=command_line(), log=lambda s: click.echo(s, err=True))


COMMANDS = [quickstart_command]
