"""``certify run``: certify a checkpoint over a dataset split, one TSV row per example.

Rows are appended and flushed one at a time, so an interrupted run keeps every finished example, and
``resume=True`` continues it without repeating or losing a row. Each example's noise depends only on
(seed, index), so resumed, sharded (``shard=(i, n)``) and uninterrupted runs write the same rows.
"""

from __future__ import annotations

import platform
import socket
import sys
import time
from collections.abc import Sized
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import torch

import certify
from certify.checkpoint import load_checkpoint
from certify.errors import UserError
from certify.exported import ExportedCheckpoint, warn_if_expects_normalized
from certify.locks import output_lock
from certify.methods import CertificationMethod, RunContext, default_method, make_method
from certify.results import (
    ResultWriter,
    check_writable,
    merge_results,
    read_results,
    read_sidecar,
    write_sidecar,
)

# Sidecar keys that must match for --resume to continue a file, whatever the method (each method adds
# its own resume_keys); the rest may differ between sessions.
RESUME_KEYS = ("checkpoint_sha256", "dataset", "input_size", "split", "skip", "count", "shard",
               "certifier", "method", "norm", "seed", "device_type")


class ResumeMismatch(UserError):
    """--resume found a file made with other settings (callers may start afresh instead)."""


@dataclass
class RunSpec:
    """Everything ``certify run`` needs; ``dataset``/``sigma`` only matter for reference checkpoints."""

    checkpoint: Path
    out: Path
    split: str = "test"
    skip: int = 1
    count: int | None = None
    shard: tuple[int, int] | None = None  # (index, number of shards), index from 0
    resume: bool = False
    force: bool = False
    dataset: str | None = None
    input_size: int | None = None  # folder:PATH datasets only: the side images are cropped to
    sigma: float | None = None
    data_dir: Path | None = None
    method: str | None = None  # None: the checkpoint kind's default method
    options: dict[str, Any] = field(default_factory=dict)  # the method's options; unset → default
    context: RunContext = field(default_factory=RunContext)
    command: str = ""


def select_indices(total: int, skip: int = 1, count: int | None = None,
                   shard: tuple[int, int] | None = None) -> list[int]:
    """Every ``skip``-th example from 0, the first ``count`` of those, then this shard's share.

    ``count`` counts certified examples (the reference's ``--max`` compares the dataset index instead).
    """
    if skip < 1:
        raise UserError(f"--skip must be at least 1, got {skip}")
    if count is not None and count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    indices = list(range(0, total, skip))[:count]
    if shard is not None:
        index, parts = shard
        if not (parts >= 1 and 0 <= index < parts):
            raise UserError(f"--shard must be I/N with 0 ≤ I < N, got {index}/{parts}")
        indices = indices[index::parts]
    return indices


def run_certification(spec: RunSpec, progress: bool = True) -> Path:
    """Certify the selected examples of ``spec.split`` into ``spec.out`` (+ its JSON sidecar),
    holding ``spec.out``'s lock throughout (a second process writing it stops at once)."""
    with output_lock(spec.out):
        return _run_certification(spec, progress)


def _run_certification(spec: RunSpec, progress: bool) -> Path:
    from certify.data import describe_dataset, load_dataset, set_input_size

    out = Path(spec.out)
    check_writable(out)
    if out.exists() and not (spec.resume or spec.force):
        raise UserError(f"{out} exists: pass --resume to continue it, --force to overwrite it, "
                        f"or choose another --out")
    dataset = spec.dataset
    if spec.input_size is not None:
        if dataset is None:
            raise UserError("--input-size sets the image size of --dataset folder:PATH: pass --dataset")
        dataset = set_input_size(dataset, spec.input_size)
    ckpt = load_checkpoint(spec.checkpoint, dataset=dataset, sigma=spec.sigma)
    trained_sigma = _trained_sigma(ckpt, spec.sigma)
    ctx = spec.context
    model = ckpt.build_model(ctx.device)
    method = make_method(ckpt, model, spec.method, spec.options, ctx)
    data = load_dataset(ckpt.dataset, spec.split, data_dir=spec.data_dir)
    if isinstance(ckpt, ExportedCheckpoint):  # a file we did not build: check its input contract
        warn_if_expects_normalized(ckpt, model, data, ctx.device)
    indices = select_indices(len(cast(Sized, data)), spec.skip, spec.count, spec.shard)

    sidecar = {
        "toolkit": f"certify {certify.__version__}", "command": spec.command,
        "checkpoint": str(spec.checkpoint), "checkpoint_sha256": ckpt.sha256,
        **({"model_format": ckpt.arch} if isinstance(ckpt, ExportedCheckpoint) else {}),
        "dataset": ckpt.dataset, **describe_dataset(ckpt.dataset),  # folder:PATH: + input_size
        "split": spec.split, "skip": spec.skip, "count": spec.count,
        "shard": f"{spec.shard[0]}/{spec.shard[1]}" if spec.shard else None,
        "examples": len(indices), **method.describe(),
        **({"trained_sigma": trained_sigma} if trained_sigma is not None else {}),
        "device": _device_name(ctx.device), "device_type": ctx.device.type,
        "hostname": socket.gethostname(),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    previous = read_sidecar(out) if spec.resume and out.exists() else None
    if spec.resume and out.exists() and previous is None:
        raise ResumeMismatch(f"cannot --resume {out}: its sidecar {out}.json is missing, so its "
                             f"settings are unknown; use --force to start it afresh, or another --out")
    if previous is not None:
        previous = {**_older_sidecar_defaults(previous), **previous}
        changed = [k for k in (*RESUME_KEYS, *method.must_match())
                   if previous.get(k) != sidecar.get(k)]
        if "method" not in previous:
            raise ResumeMismatch(f"cannot --resume {out}: its sidecar names no certification "
                                 f"method; use --force to start it afresh, or another --out")
        if changed:
            # a method option recorded with another value (e.g. a default that changed since: bound
            # was lipschitz for pure ℓ∞ nets before interval became the default) can be given again
            options = {o.name: o for o in method.options}
            again = " ".join(f"{options[k].cli_flag} {_flag_value(previous[k])}" for k in changed
                             if k in options and previous.get(k) is not None)
            raise ResumeMismatch(f"cannot --resume {out}: it was made with different settings "
                                 f"({', '.join(f'{k}={previous.get(k)!r}' for k in changed)})"
                                 + (f"; pass {again} to continue it, or --force to start afresh"
                                    if again else ""))
    sidecar["started"] = (previous or {}).get("started") or _now()
    sidecar["complete"] = False
    earlier_wall = float((previous or {}).get("wall_time", 0.0))

    start = time.perf_counter()
    with ResultWriter(out, resume=spec.resume, columns=method.columns) as writer:
        todo = [i for i in indices if i not in writer.done]
        if not todo and previous is not None and previous.get("complete"):
            return out  # a finished run: leave its sidecar as it was
        write_sidecar(out, sidecar)
        _certify_rows(method, data, todo, writer, progress)
    extra = read_results(out).columns if method.columns else {}  # totals come from extra columns
    sidecar.update(complete=True, finished=_now(), **method.totals(extra),
                   wall_time=round(earlier_wall + time.perf_counter() - start, 3))
    write_sidecar(out, sidecar)
    return out


def _certify_rows(method: CertificationMethod, data: Any, todo: list[int], writer: ResultWriter,
                  progress: bool) -> None:
    """Stream the examples through the method and write each row as it comes (in ``todo`` order)."""
    from tqdm import tqdm

    labels: dict[int, int] = {}

    def examples():
        for idx in todo:
            x, labels[idx] = data[idx]
            yield idx, x

    correct = abstained = done = 0
    with tqdm(total=len(todo), unit="img", desc=f"certify ({method.name})", disable=not progress,
              dynamic_ncols=True) as bar:
        for idx, row in zip(todo, method.certify_stream(examples()), strict=True):
            label = labels.pop(idx)
            hit = int(row.prediction == label)
            writer.write(idx, label, row.prediction, row.radius, hit, row.seconds, **row.extra)
            correct += hit
            abstained += row.prediction < 0
            done += 1
            bar.set_postfix(acc=f"{correct / done:.3f}", abstain=f"{abstained / done:.1%}",
                            refresh=False)
            bar.update(1)


def _trained_sigma(ckpt: Any, sigma: float | None) -> float | None:
    """The σ the model was trained at when --sigma certifies it at another (a note on stderr; the
    sidecar records both); refuses --sigma for a checkpoint without a smoothing certificate."""
    if sigma is None:
        return None
    if ckpt.certification.get("kind") != "smoothing":
        raise UserError(f"--sigma applies to randomized-smoothing checkpoints and models trained "
                        f"without a certificate; {ckpt.path} is {ckpt.certification.get('kind')}")
    config = ckpt.training.get("config", {})
    if config.get("objective") == "classify":
        print(f"note: {ckpt.path} was trained without noise (objective classify), not for σ = "
              f"{sigma}: its smoothed classifier is the undefended baseline", file=sys.stderr)
        return 0.0
    trained = config.get("objective_params", {}).get("sigma")
    if trained is None or float(trained) == float(sigma):
        return None
    print(f"note: {ckpt.path} was trained at σ = {trained}; certifying it at σ = {sigma} as asked "
          f"(the sidecar records both)", file=sys.stderr)
    return float(trained)


def merge_runs(shards: list[Path], out: Path, allow_incomplete: bool = False) -> None:
    """``certify merge``: join the shards of one run. On a CPU, settings that the method says do
    not change its rows (``rows_ignore``) may differ between shards."""
    from certify.methods import METHODS

    first = read_sidecar(shards[0]) or {}
    defaults = _older_sidecar_defaults(first)
    method = METHODS.get(first.get("method", defaults.get("method", "")))
    ignore = method.rows_ignore if method and first.get("device_type") == "cpu" else ()
    with output_lock(out):
        merge_results(shards, out, rows_ignore=ignore, defaults=defaults, allow_incomplete=allow_incomplete)


def _older_sidecar_defaults(sidecar: dict[str, Any]) -> dict[str, Any]:
    """Sidecars written before methods had names lack "method": it was their kind's default."""
    if "method" in sidecar or sidecar.get("certifier") not in ("smoothing", "linf_dist"):
        return {}
    return {"method": default_method(sidecar["certifier"]).name}


def _flag_value(value: Any) -> str:
    """A recorded option value as its flag takes it (lists comma-separated)."""
    return ",".join(f"{v:g}" for v in value) if isinstance(value, (list, tuple)) else str(value)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
