"""Data-parallel training on PyTorch's own engine: `torchrun` sets the environment, this
module reads it.

    torchrun --nproc_per_node=4 experiments/train.py world_model=dreamer4 task=cup-catch

Without `torchrun` (no `WORLD_SIZE` in the environment) everything here is a no-op and
the trainer runs in one process. Backends: NCCL on CUDA, gloo on CPU. The collectives
below keep running statistics (loss RMS, latent moments, the mean frame, code usage)
identical on every rank; they are called inside the loss, so every rank must reach them
in the same order, which the trainer guarantees by running the same steps everywhere.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def master(self) -> bool:
        """Rank 0 alone logs, checkpoints and shows progress."""
        return self.rank == 0


def setup(device: torch.device) -> Rank:
    """Join the process group that `torchrun` describes (once per process) and return this
    process's place in it; `Rank()` when not launched by `torchrun`. On CUDA each rank
    uses GPU `LOCAL_RANK`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Rank()
    here = Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(here.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return here


def current() -> Rank:
    """This process's place in the running process group (`Rank()` outside one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Rank()
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    """A reduced copy of `t` over the ranks (`t` itself when alone)."""
    if current().world == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=op)
    return t


def mean(t: torch.Tensor) -> torch.Tensor:
    """`t` averaged over the ranks."""
    return _all_reduce(t, dist.ReduceOp.SUM) / current().world


def total(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the ranks."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def smallest(t: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum of `t` over the ranks."""
    return _all_reduce(t, dist.ReduceOp.MIN)


def from_master(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's `t` on every rank (in place)."""
    if current().world > 1:
        dist.broadcast(t, src=0)
    return t


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


__all__ = ["Rank", "barrier", "current", "from_master", "mean", "setup", "smallest", "total"]
