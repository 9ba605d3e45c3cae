"""``certify info``: what a checkpoint records, without certifying anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command("info")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--dataset", default=None,
              help="Only for reference checkpoints and torch.export/TorchScript files: their dataset.")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), default=None,
              help="Only for reference checkpoints and torch.export/TorchScript files: their "
                   "noise level.")
@click.option("--json", "as_json", is_flag=True, help="Print every field as one JSON object instead.")
def info_command(checkpoint: Path, dataset: str | None, sigma: float | None, as_json: bool) -> None:
    """Show what CHECKPOINT records: architecture, data, certification, training and metrics.

    A reference checkpoint ({'arch', 'state_dict'}, e.g. the smoothing repository's) records
    neither its dataset nor its σ: without --dataset and --sigma, info shows what the file holds.
    """
    from certify.checkpoint import ReferenceNeedsData, load_checkpoint
    from certify.exported import ExportedCheckpoint

    try:
        ckpt = load_checkpoint(checkpoint, dataset=dataset, sigma=sigma)
    except ReferenceNeedsData as partial:
        values = sum(t.numel() for t in partial.state_dict.values() if hasattr(t, "numel"))
        record = {"format": "reference", "architecture": partial.arch, "values": values,
                  "epoch": partial.epoch, "dataset": None, "sigma": None}
        _show(record, as_json, note="pass --dataset and --sigma to certify it")
        return
    config = ckpt.training.get("config", {})
    record = {
        "format": ckpt.arch if isinstance(ckpt, ExportedCheckpoint)
        else "reference" if ckpt.reference_format else "certify",
        "architecture": ckpt.arch, "arch_kwargs": ckpt.arch_kwargs,
        "values": sum(t.numel() for t in ckpt.state_dict.values()),
        "dataset": ckpt.dataset, "input_shape": list(ckpt.input_shape), "num_classes": ckpt.num_classes,
        "mean": list(ckpt.mean), "std": list(ckpt.std), "certification": ckpt.certification,
        "epoch": ckpt.epoch, "epochs": config.get("epochs"), "objective": config.get("objective"),
        "objective_options": _resolved_objective(config),
        "optimizer": {k: config[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "batch_size",
                                             "lr_schedule", "lr_step_size", "lr_gamma") if k in config},
        "long_tail": ckpt.training.get("long_tail"), "class_counts": ckpt.training.get("class_counts"),
        "ladc": ckpt.training.get("ladc"), "metrics": ckpt.metrics, "command": ckpt.command or None,
        "sha256": ckpt.sha256,
    }
    _show(record, as_json)


def _resolved_objective(config: dict[str, Any]) -> dict[str, Any] | None:
    """The objective's settings with its defaults filled in (what it trained with, not only what was
    typed); None for a checkpoint that records no objective."""
    from certify.errors import UserError
    from certify.objectives import make_objective

    if not config.get("objective"):
        return None
    try:
        return make_objective(config["objective"], **config.get("objective_params", {})).params()
    except UserError:  # an objective of another version: show what was recorded
        return dict(config.get("objective_params", {}))


def _show(record: dict[str, Any], as_json: bool, note: str = "") -> None:
    if as_json:
        from certify.jsonutil import strict_dumps

        click.echo(strict_dumps(record))
        return
    r = record
    arch = f"{r['architecture']} {_text(r.get('arch_kwargs') or '')}".strip()
    rows = [("format", r["format"]), ("architecture", f"{arch} ({_text(r['values'])} values)")]
    if r.get("dataset"):
        rows += [("dataset", f"{r['dataset']} ({'×'.join(map(str, r['input_shape']))}, "
                             f"{r['num_classes']} classes)"),
                 ("normalization", "inside the model (certify gives it pixels in [0, 1])"
                  if r["format"] in ("torch.export", "torchscript")  # certify.exported.EXPORT, TORCHSCRIPT
                  else f"mean {_text(r['mean'])} std {_text(r['std'])}"),
                 ("certification", _text(r["certification"]))]
    if r.get("objective"):
        rows += [("trained", f"{r['epoch']} epochs of {r.get('epochs') or '?'}, objective {r['objective']}"),
                 ("objective", _text(r.get("objective_options") or {})),
                 ("optimizer", _text(r.get("optimizer") or {}))]
    elif r.get("epoch"):
        rows.append(("trained", f"{r['epoch']} epochs"))
    view = r.get("long_tail")
    if view:
        rows.append(("long-tailed view", f"ρ={view['imbalance']:g} ({view['profile']}), "
                                         f"{view['balanced_val']} per class held out, seed {view['seed']}"))
    if r.get("class_counts"):
        rows.append(("training images", " ".join(map(str, r["class_counts"])) + " (per class)"))
    if r.get("ladc"):
        rows.append(("post-hoc", f"LADC, K={r['ladc'].get('k')}"))
    for key in ("metrics", "command", "sha256"):
        if r.get(key):
            rows.append((key, _text(r[key])))
    if note:
        rows.append(("note", note))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _text(value: Any) -> str:
    """Floats to 4 significant digits, large counts with separators, mappings as k=v, lists
    space-separated."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return str(value)


COMMANDS = [info_command]
