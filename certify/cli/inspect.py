"""``certify info``: what a checkpoint records, without certifying anything."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("info")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--dataset", default=None, help="Only for reference checkpoints: their dataset.")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), default=None,
              help="Only for reference checkpoints: their noise level.")
def info_command(checkpoint: Path, dataset: str | None, sigma: float | None) -> None:
    """Show what CHECKPOINT records: architecture, data, certification, training and metrics."""
    from certify.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, dataset=dataset, sigma=sigma)
    params = sum(t.numel() for t in ckpt.state_dict.values())
    config = ckpt.training.get("config", {})
    rows = [
        ("architecture", f"{ckpt.arch} {ckpt.arch_kwargs or ''}".strip() + f" ({params:,} values)"),
        ("dataset", f"{ckpt.dataset} ({'×'.join(map(str, ckpt.input_shape))}, "
                    f"{ckpt.num_classes} classes)"),
        ("normalization", f"mean {list(ckpt.mean)} std {list(ckpt.std)}"),
        ("certification", ", ".join(f"{k}={v}" for k, v in ckpt.certification.items())),
        ("trained", f"{ckpt.epoch} epochs of {config.get('epochs', '?')}, objective "
                    f"{config.get('objective', '?')}"),
        ("metrics", ", ".join(f"{k}={v}" for k, v in ckpt.metrics.items())),
        ("command", ckpt.command or "(not recorded)"),
        ("sha256", ckpt.sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


COMMANDS = [info_command]
