"""Several processes (torchrun): joining the process group, and what the ranks decide together.

Each process trains a DistributedDataParallel replica on its own batches; rank 0 validates, logs
and writes checkpoints. device.py says which device each process has (:func:`lldiff_cli.device.process_device`).
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from lldiff_cli.device import distributed_env, process_device
from lldiff_cli.ema import EMA
from lldiff_cli.errors import LldiffError


@contextmanager
def process_group(device: torch.device):
    """Join torchrun's process group when there is one (NCCL on CUDA, gloo on the CPU) and leave it
    at the end; yields (rank, world_size, device), the device being this process's GPU on CUDA."""
    rank, world, _ = distributed_env()
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "mps":
        raise LldiffError("several processes (torchrun) need CUDA or the CPU; the device is mps")
    device = process_device(device)
    owner = not dist.is_initialized()
    if owner:
        # Rank 0 validates alone while the others wait in the next collective: allow it an hour.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=1))
    try:
        yield rank, world, device
    finally:
        if owner:
            dist.destroy_process_group()


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a Ctrl-C seen by one process stops all)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_replicas(model: nn.Module, ema: EMA, world: int, device: torch.device) -> None:
    """Raise when the ranks' weights or EMA weights differ (they must stay bit-identical)."""
    tensors = [*model.state_dict().values(), *ema.state.values()]
    mine = torch.stack([t.detach().double().sum() for t in tensors if t.dtype.is_floating_point]).to(device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    if not all(torch.equal(every[0], other) for other in every[1:]):
        raise LldiffError("the processes' weights diverged; this is a bug in lldiff, please report it")
