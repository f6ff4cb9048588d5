"""Distributed data parallel plumbing: read the torchrun environment once, rank-aware seeds.

``torchrun --nproc_per_node N -m train fit ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them the same command runs as one process. The backend is NCCL
on GPUs and gloo on CPU. Only rank 0 writes files, logs progress and draws progress bars.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (defaults: 0, 1, 0)."""
    env = os.environ if environ is None else environ
    return (
        int(env.get("RANK", "0")),
        int(env.get("WORLD_SIZE", "1")),
        int(env.get("LOCAL_RANK", "0")),
    )


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; otherwise a single process."""
    rank, world, local = env_ranks()
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rank_seed(base: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank).

    Re-seeding at every epoch start makes a resumed run draw the same windows and
    augmentations as an uninterrupted one, without restoring RNG state mid-epoch.
    """
    return (base * 1_000_003 + epoch * 1009 + rank) % (2**31 - 1)


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Sum floats across ranks (identity for a single process)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-item list for a single process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(info: DistInfo, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last training step the
    ranks hold slightly different running statistics; validation and the saved
    checkpoint must all use rank 0's.
    """
    if not info.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's boolean, on every rank (e.g. the time budget ran out)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=info.device)
    dist.broadcast(t, src=0)
    return bool(t.item())
