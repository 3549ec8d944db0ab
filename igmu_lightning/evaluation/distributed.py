"""Evaluation over several processes (DDP ranks under Lightning, or ``evaluate.py --devices N``):
each rank makes a contiguous share of every prompt list, metric states reduce across ranks
(torchmetrics concatenates them in rank order, which is list order), and images wanted whole,
such as sample grids, are gathered. One process: every helper is the identity."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torchmetrics.utilities.distributed import gather_all_tensors

from igmu_lightning.errors import IGMUError


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def share(n: int, what: str = "prompts") -> slice:
    """This rank's contiguous part of a list of ``n``: rank r takes [r n / W, (r + 1) n / W)."""
    rank, world = rank_and_world()
    if world > 1 and n < world:
        raise IGMUError(f"{n} {what} cannot be shared among {world} processes: use more {what} or fewer devices")
    return slice(rank * n // world, (rank + 1) * n // world)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (sizes may differ), on every
    rank, on the tensor's own device. NCCL moves only CUDA tensors, so CPU tensors travel there."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    device = tensor.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return torch.cat(gather_all_tensors(tensor.contiguous())).to(device)


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj`` in rank order, on every rank (``[obj]`` in one process):
    per-prompt records such as an attack's outcomes, made by each rank for its share."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (e.g. until all shares of a folder are written before it is read)."""
    if rank_and_world()[1] > 1:
        dist.barrier()
