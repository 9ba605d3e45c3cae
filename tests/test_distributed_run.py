"""``certify run --shard auto``: torchrun ranks and SLURM array tasks write parts that merge into one run."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import cli, rows_without_time
from test_distributed import free_port

from certify.distributed_run import ShardPlan, part_path, resolve_auto
from certify.errors import UserError
from certify.results import read_results, read_sidecar
from certify.training.distributed import DistInfo

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                      "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                      "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """The suite itself may run under torchrun or in an array job: start each test outside both."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def run_args(ckpt: Path, out: Path | str, data: Path, *extra: str) -> list[str]:
    return ["run", str(ckpt), "--out", str(out), "--data-dir", str(data), "--n0", "16", "--n", "64",
            "--batch", "64", "--count", "8", "--quiet", "--seed", "3", *extra]


@pytest.mark.slow
def test_torchrun_two_ranks_merge_into_the_rows_of_one_process(small_checkpoint, fake_fmnist, tmp_path,
                                                               monkeypatch):
    assert cli(*run_args(small_checkpoint, tmp_path / "single.tsv", fake_fmnist)) == 0

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"  # two processes on a shared 2-core machine
    # '--' keeps torchrun's own parser from taking --n for an abbreviation of its --nnodes etc.
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "certify", "--",
               *[a for a in run_args(small_checkpoint, "R.tsv", fake_fmnist) if a != "--quiet"],
               "--shard", "auto"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    merged = tmp_path / "R.tsv"
    assert rows_without_time(merged) == rows_without_time(tmp_path / "single.tsv")
    side = read_sidecar(merged)
    assert side["complete"] is True and side["examples"] == 8 and "shard" not in side
    parts = ["R.part-0-of-2.tsv", "R.part-1-of-2.tsv"]
    assert side["merged_from"] == parts  # kept beside R.tsv, for --resume
    assert [read_sidecar(tmp_path / p)["shard"] for p in parts] == ["0/2", "1/2"]
    assert read_results(tmp_path / parts[1]).idx.tolist() == [1, 3, 5, 7]
    assert side["command"].startswith("certify run ")  # python -m certify records itself as certify

    # what `certify merge` of the parts gives, byte for byte
    monkeypatch.chdir(tmp_path)
    assert cli("merge", *parts, "--out", "M.tsv") == 0
    assert merged.read_text() == (tmp_path / "M.tsv").read_text()
    assert json.loads((tmp_path / "R.tsv.json").read_text()) == {**read_sidecar("M.tsv"),
                                                                  "merged_from": parts}

    # rank 0 alone shows a progress bar (of its 4 images) and the summary
    assert done.stderr.count(" 0/4 [") == 1
    assert done.stdout.count("certified accuracy at") == 1


@pytest.mark.parametrize("first, step", [(0, 1), (4, 3)], ids=["from-0", "from-4-step-3"])
def test_slurm_array_tasks_write_parts_that_merge_into_one_run(small_checkpoint, fake_fmnist, tmp_path,
                                                               monkeypatch, capsys, first, step):
    single = tmp_path / "single.tsv"
    assert cli(*run_args(small_checkpoint, single, fake_fmnist)) == 0
    out = tmp_path / "R.tsv"
    hints = []
    for task in (0, 1):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(first + task * step))
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", str(first))
        monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", str(first + step))
        monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", str(step))
        capsys.readouterr()
        assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--shard", "auto")) == 0
        hints.append(capsys.readouterr().err.strip().splitlines()[-1].strip())
    assert not out.exists()  # array tasks do not wait for each other: nobody merges
    assert read_results(tmp_path / "R.part-1-of-2.tsv").idx.tolist() == [1, 3, 5, 7]

    # every task prints the same merge command; run it as a shell would (expanding the pattern)
    assert hints[0] == hints[1] and hints[0].startswith("certify merge ")
    words = shlex.split(hints[0])[1:]
    args = [match for word in words for match in (sorted(glob.glob(word)) if "*" in word else [word])]
    assert args[1:3] == [str(tmp_path / "R.part-0-of-2.tsv"), str(tmp_path / "R.part-1-of-2.tsv")]
    assert cli(*args) == 0
    assert rows_without_time(out) == rows_without_time(single)
    assert read_sidecar(out)["complete"] is True


def test_resume_continues_each_part(small_checkpoint, fake_fmnist, tmp_path, monkeypatch):
    """A part interrupted under --shard auto is continued by --resume; the merged rows are the run's."""
    from certify.smoothing import Smooth

    single = tmp_path / "single.tsv"
    assert cli(*run_args(small_checkpoint, single, fake_fmnist)) == 0
    out = tmp_path / "R.tsv"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--shard", "auto")) == 0

    original, calls = Smooth.certify, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    part = tmp_path / "R.part-1-of-2.tsv"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setattr(Smooth, "certify", interrupted)
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--shard", "auto")) == 130
    assert len(read_results(part)) == 2 and read_sidecar(part)["complete"] is False
    monkeypatch.setattr(Smooth, "certify", original)
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--shard", "auto")) == 2  # needs --resume
    assert cli(*run_args(small_checkpoint, out, fake_fmnist, "--shard", "auto", "--resume")) == 0
    assert read_sidecar(part)["complete"] is True

    assert cli("merge", tmp_path / "R.part-0-of-2.tsv", part, "--out", out) == 0
    assert rows_without_time(out) == rows_without_time(single)


def test_torchrun_single_rank_merges_and_guards_the_output(small_checkpoint, fake_fmnist, tmp_path,
                                                           monkeypatch, capsys, single_torchrun):
    """One rank (a process group of one) still writes a part and merges it; an existing OUT needs
    --resume."""
    out = tmp_path / "R.tsv"
    args = run_args(small_checkpoint, out, fake_fmnist, "--shard", "auto")
    assert cli(*args) == 0
    assert read_results(out).idx.tolist() == list(range(8)) and read_sidecar(out)["complete"] is True
    assert (tmp_path / "R.part-0-of-1.tsv").exists()
    before = out.read_text()

    capsys.readouterr()
    assert cli(*args) == 2
    assert f"{out} exists: pass --resume" in capsys.readouterr().err
    assert cli(*args, "--resume") == 0  # the finished part is kept and merged again
    assert out.read_text() == before

    # another number of processes would start over: refused (even without --resume), naming the parts
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for extra in (["--resume"], []):
        if not extra:  # without --resume an existing R.tsv stops it first
            out.unlink()
        assert cli(*args, *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "already has 1 parts (" in err and "R.part-*-of-1.tsv" in err
    assert not (tmp_path / "R.part-0-of-2.tsv").exists()


def _slurm(task: int, count: int, first: int | None = None, last: int | None = None,
           step: int | None = None) -> dict[str, str]:
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count)}
    for name, value in (("MIN", first), ("MAX", last), ("STEP", step)):
        if value is not None:
            env[f"SLURM_ARRAY_TASK_{name}"] = str(value)
    return env


TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}


@pytest.mark.parametrize("env, shard, launcher, merges, main", [
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, (0, 2), "torchrun", True, True),
    (TORCHRUN, (1, 4), "torchrun", False, False),
    (_slurm(0, 2), (0, 2), "slurm", False, True),
    (_slurm(1, 2, 0, 1, 1), (1, 2), "slurm", False, True),
    (_slurm(5, 2, 4, 5, 1), (1, 2), "slurm", False, True),  # --array=4-5
    (_slurm(7, 4, 4), (3, 4), "slurm", False, True),  # MAX and STEP unset: step 1
    (_slurm(6, 6, 0, 10, 2), (3, 6), "slurm", False, True),  # --array=0-10:2
    (_slurm(9, 3, 3, 9, 3), (2, 3), "slurm", False, True),  # --array=3-9:3
    ({**_slurm(1, 2), **TORCHRUN}, (5, 8), "slurm+torchrun", False, False),  # torchrun in each task
])
def test_environment_to_shard(env, shard, launcher, merges, main):
    plan = resolve_auto(Path("d/R.tsv"), env)
    assert (plan.shard, plan.launcher, plan.merges, plan.main) == (shard, launcher, merges, main)
    assert plan.part == part_path(Path("d/R.tsv"), *shard)


@pytest.mark.parametrize("env, message", [
    ({}, "--shard auto needs torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or a SLURM array job"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "incomplete torchrun environment: LOCAL_RANK not set"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "inconsistent torchrun environment"),
    ({"SLURM_ARRAY_TASK_ID": "0"}, "SLURM_ARRAY_TASK_COUNT is not"),
    (_slurm(0, 2) | {"SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID='x' is not an integer"),
    (_slurm(2, 2), "evenly spaced"),  # the id is past the last task (MIN unset: 0)
    (_slurm(3, 6, 0, 10, 2), "evenly spaced"),  # 3 is not on the step of --array=0-10:2
    (_slurm(3, 3, 1, 8, 1), "evenly spaced"),  # --array=1,3,8
    (_slurm(0, 0), "evenly spaced"),
])
def test_environment_errors(env, message):
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_auto(Path("R.tsv"), env)


def test_part_names_and_merge_command():
    assert part_path(Path("d/R.tsv"), 3, 16) == Path("d/R.part-03-of-16.tsv")  # sorts as numbers
    assert part_path(Path("R"), 1, 2) == Path("R.part-1-of-2")
    assert part_path(Path("a.b.tsv"), 0, 1) == Path("a.b.part-0-of-1.tsv")
    plan = ShardPlan(Path("my runs/R.tsv"), (0, 8), "slurm", DistInfo())
    assert plan.merge_command() == "certify merge 'my runs/R.part-'*-of-8.tsv --out 'my runs/R.tsv'"
    assert [p.name for p in plan.parts][-1] == "R.part-7-of-8.tsv"


@pytest.mark.parametrize("env, message", [
    ({}, "error: --shard auto needs torchrun"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "error: incomplete torchrun environment: LOCAL_RANK not set"),
    (_slurm(3, 3, 1, 8, 1), "error: --shard auto needs a SLURM array of evenly spaced task ids"),
])
def test_cli_says_what_auto_needs_in_one_line(small_checkpoint, fake_fmnist, tmp_path, monkeypatch,
                                              capsys, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli(*run_args(small_checkpoint, tmp_path / "R.tsv", fake_fmnist, "--shard", "auto")) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fmnist", "model.pt"])
