"""Metric states reduce across processes: two gloo processes, each with half the samples, give
the same values (and bootstrap CIs) as one process with all of them."""

import json

import torch
from torch import nn

from igmu_lightning.metrics import ClassRate
from igmu_lightning.metrics.fid import FID
from tests.conftest import on_gloo_processes

PREDICTIONS = torch.tensor([2, 0, 2, 2, 1, 2, 0, 2, 2, 2, 1, 0])
PROMPTS = torch.arange(12) // 3  # four prompts, three seeds each
IMAGES = torch.linspace(0, 1, 24 * 4).reshape(24, 1, 2, 2)


def scores(rank: int, world: int) -> dict:
    rate, clustered, fid = ClassRate(2), ClassRate(2), FID(feature=nn.Flatten())
    half = len(PREDICTIONS) // world
    mine = slice(rank * half, (rank + 1) * half)
    rate.update(PREDICTIONS[mine])
    clustered.update(PREDICTIONS[mine], PROMPTS[mine])  # prompt ids travel with the outcomes
    part = len(IMAGES) // world
    fid.update(IMAGES[rank * part : (rank + 1) * part], real=True)
    fid.update(IMAGES[rank * part : (rank + 1) * part] ** 2, real=False)
    return {"rate": rate.summary(seed=0), "clustered": clustered.summary(seed=0), "fid": fid.summary(seed=0, resamples=20)}


def test_two_gloo_processes_match_one(tmp_path):
    result = on_gloo_processes(scores, 2, tmp_path)
    one = scores(0, 1)
    assert json.loads(json.dumps(result)) == json.loads(json.dumps(one))
    assert one["clustered"]["ci_method"] == "cluster_bootstrap_prompts" and one["rate"]["ci_method"] == "wilson"
