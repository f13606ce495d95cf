"""Training and prediction on several processes (GPUs, nodes) with PyTorch's distributed engine.

Run under ``torchrun`` (``python -m torch.distributed.run``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them (or with a
world of one) everything runs in one process and nothing here does anything. The backend is
NCCL on CUDA and gloo on the CPU.

How :func:`~.trainer.train_job` uses it:

* every rank draws the same epoch plan (same seed) and trains on its :meth:`Distributed.share`
  of it, through a :class:`~torch.nn.parallel.DistributedDataParallel` model whose gradients are
  averaged over the ranks;
* validation cases are split over the ranks (:meth:`Distributed.shard`) and the per-case table
  is gathered (:meth:`Distributed.gather`), so per-group Dice, the divergence weights and
  GroupDRO's q come from all ranks' cases, identically on every rank;
* GroupDRO's per-batch group losses are summed over the ranks (:meth:`Distributed.all_reduce_sum`);
* only rank 0 (:attr:`Distributed.is_main`) writes checkpoints and logs.

How :func:`~.predict.predict_pool_job` (``fairseg predict --nproc N``) uses it: each rank
predicts, scores and writes the outputs of its :meth:`Distributed.shard` of the cases; the score
rows are gathered, and rank 0 writes ``scores.csv``.

It lives with inference (the layer below training) so that prediction can shard too.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .device import choose_device

T = TypeVar("T")
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this node (its GPU index).
    device : torch.device
        The device this process trains on (``cuda:<local_rank>`` on CUDA).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and logs."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's part of a training epoch: every ``world_size``-th item from ``rank``.

        Every rank gets the same number of items (so the same number of optimizer steps, which
        DDP needs): when ``len(items)`` is not a multiple of ``world_size`` the list is padded
        by wrapping around to its start, so a few items are then trained twice that epoch.
        """
        items = list(items)
        if not self.active or not items:
            return items
        total = math.ceil(len(items) / self.world_size) * self.world_size
        padded = (items * math.ceil(total / len(items)))[:total]
        return padded[self.rank::self.world_size]

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's part of an evaluation: every ``world_size``-th item from ``rank``, no padding."""
        return list(items)[self.rank::self.world_size]

    def gather(self, obj: T) -> list[T]:
        """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (a new tensor; ``tensor`` itself in one process)."""
        if not self.active:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (itself in one process)."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return all(k in os.environ for k in ENV) and int(os.environ["WORLD_SIZE"]) > 1


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Distributed]:
    """The process group for the duration of a training run.

    Under ``torchrun`` joins (and afterwards leaves) the process group — NCCL on CUDA, gloo on
    the CPU — unless the caller already did; otherwise yields a one-process :class:`Distributed`.
    ``device`` is a :class:`~.trainer.TrainConfig` device name; on CUDA each process takes the
    GPU of its local rank.
    """
    chosen = choose_device(device)
    if not launched():
        yield Distributed(device=chosen)
        return
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        yield Distributed(rank, world, local, chosen)
    finally:
        if joined:
            dist.destroy_process_group()


def launch_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command that runs ``fairseg <argv>`` as ``nproc`` processes on this machine under
    ``torchrun`` (``python -m torch.distributed.run --standalone``), ``--nproc`` taken out."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "napari_fairseg.cli", *rest]
