"""``certify ladc``: rebalance a long-tailed checkpoint's classifier head after training (LADC)."""

from __future__ import annotations

from pathlib import Path

import click

from certify.cli.options import command_line, data_dir_option, device_option, pick_device


@click.command("ladc")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the calibrated checkpoint (must not exist yet).")
@click.option("--k", "k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Size of each class's neighbourhood: the class and its K-1 nearest head classes.")
@click.option("--cov-alpha", "--alpha", "alpha", type=float, default=0.0, show_default=True,
              help="Added to every entry of the calibrated covariance (TailCalib's α).")
@click.option("--tukey", "tukey_lambda", type=float, default=1.0, show_default=True,
              help="Tukey power of the seed features (1: none). Only 1 is accepted for now: the "
                   "exported model cannot apply the transform at inference.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Epochs of head retraining over real + generated features.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="Initial learning rate of the head (SGD, momentum 0.9, cosine to 0).")
@click.option("--batch", type=click.IntRange(min=1), default=512, show_default=True,
              help="Batch size of head retraining.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the input noise (smoothing models), the generated features, the head's "
                   "re-initialization and the shuffling.")
@device_option
@data_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def ladc_command(checkpoint: Path, out: Path, k: int, alpha: float, tukey_lambda: float, epochs: int,
                 lr: float, batch: int, seed: int, device: str, data_dir: str | None, quiet: bool) -> None:
    """Label-aware distribution calibration (LADC): retrain CHECKPOINT's last layer on a
    rebalanced feature set, keeping the rest of the network.

    A model trained on long-tailed data has good features but a last layer biased towards the
    frequent classes. LADC takes the penultimate features of the exact training set (for a
    smoothing model: of noisy copies at its σ), and for every class with fewer images than the
    largest generates features until it has as many: each real feature x of class c seeds
    samples from N((x + Σ μ_k)/(|N_c|+1), mean Σ_k + α + 1e-4·I) over k in N_c. The head is then
    re-initialized and trained alone on real + generated features.

    N_c is our choice (LADC's exact rule is unpublished): the class itself and the K-1 head
    classes (more than n_max/5 training images) whose feature means are nearest to the class's
    own, chosen once per class.

    Prints the generated counts per class, then test accuracy and balanced accuracy before and
    after. ℓ∞-distance nets are refused: their certificate is built into the whole network.

    \b
    Example:
      certify ladc models/lt.pt --out models/lt-ladc.pt --k 3 --epochs 10
    """
    from certify.ladc import LadcSpec, format_ladc, run_ladc

    spec = LadcSpec(checkpoint=checkpoint, out=out, k=k, alpha=alpha, tukey_lambda=tukey_lambda,
                    epochs=epochs, lr=lr, batch=batch, seed=seed, device=pick_device(device),
                    data_dir=data_dir, command=command_line(), progress=not quiet)
    click.echo(format_ladc(run_ladc(spec)))
    click.echo(f"wrote {out}")


COMMANDS = [ladc_command]
