"""``certify train``: train a base classifier for certification (Gaussian augmentation for now)."""

from __future__ import annotations

from pathlib import Path

import click

from certify.cli.options import command_line, data_dir_option, device_option, pick_device, seed_option
from certify.errors import UserError


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


@click.command("train")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, mnist or cifar10.")
@click.option("--arch", default="lenet", show_default=True,
              help="lenet (28×28), small_cnn, cifar_resnet20, cifar_resnet110.")
@click.option("--arch-opt", "arch_kwargs", multiple=True, callback=_parse_arch_options,
              metavar="KEY=VALUE", help="Architecture option, e.g. --arch-opt width=8 for small_cnn.")
@click.option("--objective", default="gaussian", show_default=True,
              help="Training objective: gaussian (noise augmentation, Cohen et al. 2019).")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), default=0.25, show_default=True,
              help="Noise level σ in [0,1] pixel units; certify with the same σ.")
@click.option("--epochs", type=click.IntRange(min=1), default=90, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True)
@click.option("--lr-step", type=click.IntRange(min=1), default=30, show_default=True,
              help="Multiply the learning rate by --gamma every this many epochs.")
@click.option("--gamma", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--train-count", type=click.IntRange(min=1), default=None,
              help="Train on the first N training images only (short budgets).")
@click.option("--eval-count", type=click.IntRange(min=1), default=None,
              help="Evaluate each epoch on the first N test images (default: all).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes.")
@seed_option
@device_option
@data_dir_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint file, rewritten atomically after every epoch.")
@click.option("--resume", is_flag=True,
              help="Continue OUT where it stopped (same settings; --epochs may grow).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def train_command(dataset: str, arch: str, arch_kwargs: dict, objective: str, sigma: float, epochs: int,
                  batch: int, lr: float, lr_step: int, gamma: float, momentum: float,
                  weight_decay: float, train_count: int | None, eval_count: int | None, workers: int,
                  seed: int, device: str, data_dir: str | None, out: Path, resume: bool,
                  quiet: bool) -> None:
    """Train a model whose smoothed version 'certify run' can certify.

    Defaults are those of the randomized-smoothing reference (SGD, lr 0.1, momentum 0.9, weight
    decay 1e-4, lr ×0.1 every 30 epochs, batch 256). The checkpoint records the architecture,
    data, normalization, σ and this command line.

    \b
    Examples:
      certify train --dataset fashion-mnist --arch lenet --sigma 0.25 --epochs 10 --out m.pt
      certify train --dataset cifar10 --arch cifar_resnet110 --sigma 0.5 --data-dir ~/cifar --out c.pt
    """
    from certify.training import TrainConfig, train

    if out.exists() and not resume:
        raise UserError(f"{out} exists: pass --resume to continue training it, or choose another --out")
    config = TrainConfig(dataset=dataset, arch=arch, arch_kwargs=arch_kwargs, objective=objective,
                         objective_params={"sigma": sigma}, epochs=epochs, batch_size=batch, lr=lr,
                         momentum=momentum, weight_decay=weight_decay, lr_step_size=lr_step,
                         lr_gamma=gamma, train_count=train_count, eval_count=eval_count, seed=seed,
                         workers=workers, device=str(pick_device(device)), data_dir=data_dir)
    ckpt = train(config, out, resume=resume, command=command_line(), progress=not quiet,
                 log=lambda line: click.echo(line, err=True))
    click.echo(f"wrote {out} (test accuracy {ckpt.metrics.get('test_acc', float('nan')):.4f})")


COMMANDS = [train_command]
