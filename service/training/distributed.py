"""Data-parallel training under ``torchrun``: which process this is, its device, the process group, its share
of the CPU, and the network wrapped so that gradients are averaged over the processes.

Alone (no RANK and WORLD_SIZE in the environment) a process is rank 0 of 1 and nothing here does anything.
With several, each process draws its own crops; gloo joins them on the CPU, NCCL on CUDA (with SyncBatchNorm).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from tileseg.training.errors import TrainingConfigError


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls) -> Processes:
        """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, procs: Processes) -> torch.device:
    """``auto`` is CUDA when available; under torchrun each process takes the GPU of its local rank.

    Raises:
        TrainingConfigError: CUDA asked for where this torch sees none.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingConfigError("--device cuda, but this torch sees no CUDA device")
        return torch.device("cuda", procs.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def process_group(procs: Processes, device: torch.device) -> Iterator[None]:
    """Join the run's process group for the duration (nothing to join when alone)."""
    if not procs.distributed:
        yield
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def share_threads(threads: int | None, procs: Processes, device: torch.device) -> None:
    """Set torch's CPU threads: ``threads`` when given; else, for several processes on one CPU, an equal share
    of its cores each."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif procs.distributed and device.type == "cpu":
        # several processes on one CPU would otherwise each take every core and fight over them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def sync_batchnorm(net: nn.Module, procs: Processes, device: torch.device) -> nn.Module:
    """The net with BatchNorm synchronised over the processes (NCCL runs only; the net itself when alone)."""
    if procs.distributed and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net


def data_parallel(model: nn.Module, procs: Processes, device: torch.device) -> nn.Module:
    """The model as DistributedDataParallel when there are several processes; the model itself when alone."""
    if not procs.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # static_graph: the same parameters take part in every step, and it tolerates heads left unused
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
    )


def barrier(procs: Processes) -> None:
    """Wait for every process (nothing to wait for when alone)."""
    if procs.distributed:
        import torch.distributed as dist

        dist.barrier()
