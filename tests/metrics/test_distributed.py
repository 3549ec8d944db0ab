"""Metric states reduce across processes: two gloo processes, each with half the samples, give
the same values (and bootstrap CIs) as one process with all of them."""

import json
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from igmu_lightning.metrics import ClassRate
from igmu_lightning.metrics.fid import FID

PREDICTIONS = torch.tensor([2, 0, 2, 2, 1, 2, 0, 2, 2, 2, 1, 0])
IMAGES = torch.linspace(0, 1, 24 * 4).reshape(24, 1, 2, 2)


def scores(rank: int, world: int) -> dict:
    rate, fid = ClassRate(2), FID(feature=nn.Flatten())
    half = len(PREDICTIONS) // world
    rate.update(PREDICTIONS[rank * half : (rank + 1) * half])
    part = len(IMAGES) // world
    fid.update(IMAGES[rank * part : (rank + 1) * part], real=True)
    fid.update(IMAGES[rank * part : (rank + 1) * part] ** 2, real=False)
    return {"rate": rate.summary(seed=0), "fid": fid.summary(seed=0, resamples=20)}


def worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = scores(rank, world)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.json"
    mp.spawn(worker, args=(2, port, str(out)), nprocs=2, join=True)
    assert json.loads(out.read_text()) == json.loads(json.dumps(scores(0, 1)))
