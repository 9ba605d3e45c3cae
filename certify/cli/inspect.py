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
        *_long_tail_rows(ckpt.training),
        ("metrics", ", ".join(f"{k}={v}" for k, v in ckpt.metrics.items())),
        ("command", ckpt.command or "(not recorded)"),
        ("sha256", ckpt.sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _long_tail_rows(training: dict) -> list[tuple[str, str]]:
    """The data view and the post-hoc step, for checkpoints that have them."""
    rows = []
    view = training.get("long_tail")
    if view:
        rows.append(("long-tailed view", f"ρ={view['imbalance']:g} ({view['profile']}), "
                                         f"{view['balanced_val']} per class held out, seed {view['seed']}"))
    if training.get("class_counts"):
        rows.append(("training images", " ".join(map(str, training["class_counts"])) + " (per class)"))
    if training.get("ladc"):
        rows.append(("post-hoc", f"LADC, K={training['ladc'].get('k')}"))
    return rows


COMMANDS = [info_command]
