"""``certify run --shard auto``: one part of a run per torchrun rank or SLURM array task.

The launcher says which share of the examples this process certifies, so one command line serves
every process. Each process writes its part ``R.part-I-of-N.tsv`` beside ``R.tsv`` (with its own
sidecar, resumable like any run), exactly what ``--shard I/N --out R.part-I-of-N.tsv`` would write.

* torchrun: rank 0 waits for every rank (a gloo barrier whose timeout is weeks, as a part can take
  hours; a rank that dies closes its connections, so the others stop at once instead of waiting),
  then merges the parts into ``R.tsv`` as ``certify merge`` would. The parts stay: they are what
  ``--resume`` continues, and the merged sidecar lists them (``merged_from``).
* SLURM array: the tasks cannot wait for each other, so each writes its part and prints the
  ``certify merge`` command to run once the whole array has finished.
* Both (torchrun inside each array task): part ``task × world + rank`` of ``tasks × world``; no merge.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from certify.errors import UserError
from certify.results import check_writable
from certify.runner import RunSpec, merge_runs, run_certification
from certify.training import distributed
from certify.training.distributed import DistInfo, env_info

__all__ = ["ShardPlan", "part_path", "resolve_auto", "run_auto", "slurm_task"]

# How long a rank waits for the others at the final barrier (and for all to join at the start).
WAIT = timedelta(days=30)

_TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _split_name(out: Path) -> tuple[str, str]:
    """``R.tsv`` → ("R", ".tsv"); a name without a suffix keeps it empty."""
    suffix = out.suffix
    return out.name[:len(out.name) - len(suffix)], suffix


def part_path(out: Path, index: int, parts: int) -> Path:
    """Part I of N of ``out``: ``R.tsv`` → ``R.part-I-of-N.tsv``, I zero-padded so parts sort in order."""
    stem, suffix = _split_name(Path(out))
    return Path(out).with_name(f"{stem}.part-{index:0{len(str(parts - 1))}d}-of-{parts}{suffix}")


def _parts_glob(out: Path, parts: int) -> str:
    """A shell pattern for the N parts of ``out`` (quoted except for its ``*``)."""
    stem, suffix = _split_name(out)
    return shlex.quote(str(out.with_name(f"{stem}.part-"))) + "*" + shlex.quote(f"-of-{parts}{suffix}")


@dataclass(frozen=True)
class ShardPlan:
    """What ``--shard auto`` means for this process: its shard, its part file, whether it merges."""

    out: Path  # the merged results file (--out)
    shard: tuple[int, int]  # (index, number of parts)
    launcher: str  # "torchrun", "slurm" or "slurm+torchrun"
    rank: DistInfo = field(default_factory=DistInfo)  # place in the torchrun job, if any

    @property
    def part(self) -> Path:
        return part_path(self.out, *self.shard)

    @property
    def parts(self) -> list[Path]:
        return [part_path(self.out, i, self.shard[1]) for i in range(self.shard[1])]

    @property
    def main(self) -> bool:
        """Shows the progress bar and the summary (rank 0 of a torchrun job; every array task)."""
        return self.rank.is_main

    @property
    def merges(self) -> bool:
        """Only a torchrun job can wait for all its parts; array tasks finish independently."""
        return self.launcher == "torchrun" and self.rank.is_main

    def merge_command(self) -> str:
        """The ``certify merge`` line that joins the parts once every array task has finished."""
        return f"certify merge {_parts_glob(self.out, self.shard[1])} --out {shlex.quote(str(self.out))}"


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = environ.get(name)
    if text is None:
        if default is None:
            raise UserError(f"SLURM_ARRAY_TASK_ID is set but {name} is not: --shard auto needs the "
                            f"variables Slurm sets in array jobs; otherwise give --shard I/N")
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not an integer: --shard auto cannot tell this array "
                        f"task's shard; give --shard I/N") from None


def slurm_task(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(this task's position, number of tasks) in a SLURM job array, or None outside one.

    Task ids run from SLURM_ARRAY_TASK_MIN to _MAX by _STEP (``--array=2-10:2``: 2, 4, ..., 10 are
    positions 0..4). Arrays of ids that are not evenly spaced (``--array=1,3,8``) are refused.
    """
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return None
    task = _integer(environ, "SLURM_ARRAY_TASK_ID")
    count = _integer(environ, "SLURM_ARRAY_TASK_COUNT")
    first = _integer(environ, "SLURM_ARRAY_TASK_MIN", 0)
    step = _integer(environ, "SLURM_ARRAY_TASK_STEP", 1)
    last = _integer(environ, "SLURM_ARRAY_TASK_MAX", first + step * (count - 1))
    if count < 1 or step < 1 or last != first + step * (count - 1) or not first <= task <= last \
            or (task - first) % step:
        raise UserError(f"--shard auto needs a SLURM array of evenly spaced task ids (such as "
                        f"--array=0-7 or --array=1-15:2); this array has {count} tasks with ids "
                        f"{first} to {last}, step {step}, and this task's id is {task}: give each "
                        f"task --shard I/N instead")
    return (task - first) // step, count


def resolve_auto(out: Path, environ: Mapping[str, str] | None = None) -> ShardPlan:
    """Read torchrun's and SLURM's variables into this process's plan (one clear error otherwise)."""
    environ = os.environ if environ is None else environ
    slurm = slurm_task(environ)
    torchrun = any(name in environ for name in _TORCHRUN)
    if not torchrun and slurm is None:
        raise UserError("--shard auto needs torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or a SLURM array "
                        "job (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT); neither is set here: "
                        "launch with one of them, or give --shard I/N")
    info = env_info(dict(environ)) if torchrun else DistInfo()
    if slurm is None:
        return ShardPlan(Path(out), (info.rank, info.world_size), "torchrun", info)
    task, tasks = slurm
    if not torchrun:
        return ShardPlan(Path(out), (task, tasks), "slurm")
    return ShardPlan(Path(out), (task * info.world_size + info.rank, tasks * info.world_size),
                     "slurm+torchrun", info)


def _refuse_other_splits(plan: ShardPlan) -> None:
    """Parts of ``out`` split another way are hours of work that this split would silently redo
    (an array resubmitted with fewer tasks, torchrun with other ranks): say so instead."""
    out = plan.out
    stem, suffix = _split_name(out)
    pattern = re.compile(re.escape(stem) + r"\.part-\d+-of-(\d+)" + re.escape(suffix) + "$")
    try:
        names = [p.name for p in out.parent.iterdir()]
    except OSError:
        return
    splits = sorted({int(m[1]) for name in names if (m := pattern.match(name))} - {plan.shard[1]})
    if splits and not plan.part.exists():
        raise UserError(f"{out} already has {splits[0]} parts ({_parts_glob(out, splits[0])}) but "
                        f"{plan.launcher} asks for {plan.shard[1]}: continue them with as many "
                        f"ranks or array tasks (or --shard I/{splits[0]} --out THAT_PART --resume), "
                        f"or pass --force to start {plan.shard[1]} new parts")


def run_auto(spec: RunSpec, progress: bool = True) -> tuple[Path | None, str | None]:
    """Certify this process's part of ``spec`` (its ``shard`` is ignored) and, on torchrun's rank 0,
    merge all parts into ``spec.out``.

    Returns the results file whose summary this process shows (None: stay quiet) and, for array
    tasks, the ``certify merge`` command to run afterwards.
    """
    plan = resolve_auto(spec.out)
    out = Path(spec.out)
    check_writable(out)
    if out.exists() and not (spec.resume or spec.force):
        raise UserError(f"{out} exists: pass --resume to continue its parts, --force to overwrite it "
                        f"and them, or choose another --out")
    if not spec.force:
        _refuse_other_splits(plan)
    info, device = DistInfo(), spec.context.device
    if plan.launcher != "slurm":  # one GPU per rank, and a group to wait for the others
        info, device = distributed.init_from_env(device, backend="gloo", timeout=WAIT)
    part = replace(spec, out=plan.part, shard=plan.shard, context=replace(spec.context, device=device))
    try:
        run_certification(part, progress=progress and plan.main)
        try:
            distributed.barrier()
        except RuntimeError:  # gloo: a rank died and its connections closed
            raise UserError(f"another rank stopped before finishing its part (see its error); "
                            f"{plan.part} is complete: rerun the same command with --resume") from None
    finally:
        distributed.cleanup(info)
    if plan.merges:
        missing = [p for p in plan.parts if not p.exists()]
        if missing:
            raise UserError(f"{missing[0]} is missing although every rank finished: across nodes, "
                            f"--out must be on a file system that every node shares")
        merge_runs(plan.parts, out)
        return out, None
    if not plan.main:
        return None, None
    return plan.part, (plan.merge_command() if plan.launcher != "torchrun" else None)
