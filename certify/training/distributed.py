"""torchrun support for the training loop: process group, device, sampler, DDP wrapper, collectives.

``certify train`` run under ``torchrun --nproc_per_node=K`` finds RANK / WORLD_SIZE / LOCAL_RANK in
its environment; everything here is a no-op for a single process, so the loop has one code path.
Each process trains on its own 1/K of every epoch with its own batch of ``--batch`` images
(global batch K × batch); gradients are averaged by DistributedDataParallel.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from certify.errors import UserError

__all__ = ["DistInfo", "init_from_env", "is_main", "barrier", "cleanup", "train_sampler", "wrap_model",
           "unwrap", "sum_across_ranks", "all_gather", "broadcast_object", "broadcast_buffers"]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; ``owns_group`` says whether ``cleanup`` may destroy it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    launched: bool = False  # started by torchrun, even as its only process

    @property
    def enabled(self) -> bool:
        """The distributed path runs: several processes, or torchrun with one (which then takes
        the same path, NCCL included, as a job of many: how one GPU can test it)."""
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info(environ: dict[str, str] | None = None) -> DistInfo:
    """Read torchrun's variables; absent means one process. A partial set is a launch mistake."""
    environ = dict(os.environ) if environ is None else environ
    present = [name for name in _ENV if name in environ]
    if not present:
        return DistInfo()
    if len(present) != len(_ENV):
        missing = ", ".join(name for name in _ENV if name not in environ)
        raise UserError(f"incomplete torchrun environment: {missing} not set; launch with torchrun "
                        f"or unset {', '.join(present)}")
    try:
        rank, world, local = (int(environ[name]) for name in _ENV)
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers: launch with torchrun") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
                        f"LOCAL_RANK={local}")
    return DistInfo(rank=rank, world_size=world, local_rank=local, launched=True)


def init_from_env(device: str | torch.device, backend: str | None = None,
                  timeout: timedelta | None = None) -> tuple[DistInfo, torch.device]:
    """Join the torchrun job (NCCL on CUDA, gloo on CPU) and return this rank's device.

    Under torchrun a CUDA ``device`` becomes ``cuda:LOCAL_RANK`` (one GPU per process). A process group
    that the caller already initialized is reused and left for the caller to destroy. ``backend`` and
    ``timeout`` override the defaults (``certify run --shard auto`` coordinates with gloo and waits hours).
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():  # the caller's group: theirs to destroy
        local = os.environ.get("LOCAL_RANK", "0")
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(local) if local.isdigit() else 0)
        return info, _rank_device(device, info)
    info = env_info()
    if not info.enabled:
        return info, device
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed: run without torchrun")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UserError(f"{name} is not set: launch distributed runs with torchrun")
    device = _rank_device(device, info)
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if backend == "nccl":
            kwargs["device_id"] = device  # binds NCCL to this GPU, so barriers need no device_ids
    dist.init_process_group(backend=backend, init_method="env://",
                            rank=info.rank, world_size=info.world_size, **kwargs)
    return DistInfo(info.rank, info.world_size, info.local_rank, owns_group=True, launched=True), device


def _rank_device(device: torch.device, info: DistInfo) -> torch.device:
    if device.type != "cuda" or not info.enabled:
        return device
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise UserError(f"LOCAL_RANK {info.local_rank} has no GPU: this node has {count}; "
                        f"use --nproc_per_node={count} or fewer")
    return torch.device("cuda", info.local_rank)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that logs and writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has finished writing the checkpoint)."""
    if _active():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if ``init_from_env`` created it."""
    if info.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train_sampler(dataset: Dataset, info: DistInfo, seed: int) -> DistributedSampler:
    """This rank's 1/K of a fresh permutation per epoch (call ``set_epoch``); the same on every rank.

    Without ``drop_last`` the sampler pads with repeated indices so every rank gets the same number of
    batches, which DDP needs (the ranks' optimizer steps must line up).
    """
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                              seed=seed, drop_last=False)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel without per-forward buffer broadcasts.

    Objectives may call the model several times per step (SmoothMix: T attack passes, then two
    training passes); broadcasting BatchNorm statistics before each of them costs a collective per
    pass and rewrites buffers in place between forward and backward. ``broadcast_buffers`` below
    syncs them once per epoch instead.
    """
    kwargs: dict[str, Any] = {"device_ids": [device.index]} if device.type == "cuda" else {}
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper: its state dict has no ``module.`` prefix."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Add up per-rank epoch sums (a key missing on a rank counts as 0)."""
    total: dict[str, float] = {}
    for part in all_gather(values):
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, so all replicas equal the checkpoint."""
    if not _active():
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer.data, src=0)
