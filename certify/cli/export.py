"""``certify export``: one of our checkpoints as a torch.export program."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The program to write (.pt2 by convention).")
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.")
def export_command(checkpoint: Path, out: Path, force: bool) -> None:
    """Write CHECKPOINT's model as a torch.export program for any batch size.

    The program holds the graph and the weights, normalization included, and no Python code: code
    that knows nothing of certify can load it with torch.export.load and run it on pixels in [0, 1].
    It records neither the dataset nor σ, so 'certify run' takes them as --dataset and --sigma (the
    command to use is printed). Smoothing checkpoints only: an ℓ∞-dist net's certificate comes from
    its own layers, not from the noise.

    \b
    Example:
      certify export models/fashion-mnist-lenet-sigma0.25.pt --out lenet.pt2
    """
    from certify.exported import export_checkpoint

    ckpt = export_checkpoint(checkpoint, out, force=force)
    sigma = ckpt.certification.get("sigma")
    shape = "×".join(map(str, ckpt.input_shape))
    click.echo(f"wrote {out}: torch.export program of {ckpt.arch} for {ckpt.dataset} ({shape} pixels "
               f"in [0, 1] → {ckpt.num_classes} logits, normalization inside, any batch size)")
    click.echo(f"{checkpoint} was trained without noise; certify its smoothed classifier at a σ of "
               f"your choice with:" if sigma is None else "certify it at its training σ with:")
    click.echo(f"  certify run {out} --dataset {ckpt.dataset} --sigma {sigma or 'SIGMA'} "
               f"--out {out.with_suffix('.tsv').name}")


COMMANDS = [export_command]
