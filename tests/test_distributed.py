"""Data-parallel training under torchrun: CPU processes with gloo, rank 0 writes, resume continues."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from certify.checkpoint import load_checkpoint
from certify.cli import main
from certify.errors import UserError
from certify.results import read_results
from certify.training.distributed import DistInfo, cleanup, env_info, init_from_env, train_sampler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m certify.cli train ...`` on the CPU (gloo), in tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # two processes on a shared 2-core machine
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "certify.cli",
               "train", "--arch", "small_cnn", "--arch-opt", "width=4", "--arch-opt", "hidden=16",
               "--sigma", "0.5", "--batch", "8", "--lr", "0.05", "--lr-step", "1", "--gamma", "0.5",
               "--seed", "4", "--device", "cpu", "--data-dir", str(data), "--quiet", "--out", "m.pt",
               *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_torchrun_two_processes_checkpoint_on_rank0_and_resume(fake_fmnist, tmp_path):
    first = torchrun(tmp_path, fake_fmnist, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("wrote m.pt") == 1  # rank 0 only
    assert first.stderr.count("epoch 1/1") == 1

    second = torchrun(tmp_path, fake_fmnist, "--epochs", "2", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming m.pt after epoch 1" in second.stderr

    # one checkpoint, one log, no temporary files from either rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fmnist", "m.jsonl", "m.pt"]
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert [r["lr"] for r in lines] == [0.05, 0.025]  # the schedule continued after the resume
    assert all(r["images"] == 40 for r in lines)  # 20 per rank, summed over both

    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.epoch == 2 and ckpt.training["world_size"] == 2
    assert len(ckpt.resume_state["rng_ranks"]) == 2  # each rank's RNG, for an exact resume
    assert not any(k.startswith("module.") for k in ckpt.state_dict)  # the unwrapped model
    assert ckpt.training["history"] == lines

    out = tmp_path / "r.tsv"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "m.pt"), "--out", str(out), "--data-dir", str(fake_fmnist),
              "--n0", "10", "--n", "50", "--quiet"])
    assert exit_info.value.code == 0
    assert len(read_results(out)) == 12


def test_sampler_gives_each_rank_a_disjoint_share_and_reshuffles_per_epoch():
    data = list(range(40))
    samplers = [train_sampler(data, DistInfo(rank=r, world_size=2), seed=4) for r in range(2)]

    def epoch(e: int) -> list[list[int]]:
        for s in samplers:
            s.set_epoch(e)
        return [list(s) for s in samplers]

    a, b = epoch(0)
    assert len(a) == len(b) == 20 and set(a).isdisjoint(b) and set(a) | set(b) == set(data)
    assert epoch(0) == [a, b]  # the same permutation on every call (and every rank)
    assert epoch(1) != [a, b]  # a new one each epoch

    odd = [list(train_sampler(list(range(41)), DistInfo(rank=r, world_size=2), seed=0)) for r in range(2)]
    assert len(odd[0]) == len(odd[1]) == 21  # padded: both ranks take the same number of steps
    assert set(odd[0]) | set(odd[1]) == set(range(41))


def test_environment_detection():
    assert env_info({}) == DistInfo() and not DistInfo().enabled
    assert env_info({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(1, 4, 1, launched=True)
    with pytest.raises(UserError, match="incomplete torchrun environment: LOCAL_RANK not set"):
        env_info({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="must be integers"):
        env_info({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match="inconsistent torchrun environment"):
        env_info({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_a_single_process_under_torchrun_takes_the_distributed_path(single_torchrun):
    """torchrun with one process joins a process group of one (NCCL on a GPU), so one GPU can test
    the distributed path (without torchrun, env_info gives a DistInfo that is not enabled)."""
    info, device = init_from_env("cpu")
    try:
        assert info.enabled and info.owns_group and device == torch.device("cpu")
        assert torch.distributed.get_world_size() == 1 and torch.distributed.get_backend() == "gloo"
    finally:
        cleanup(info)
    assert not torch.distributed.is_initialized()
