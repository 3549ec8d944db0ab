"""The EvalIGMU metrics, each wired once: the world evaluation and IGMU-folder scoring hand their
images and judge outputs to a ``Scorecard``, which computes every metric the same way and admits
only the metrics the task table (``evaluation.tasks``) lists for the category."""

from __future__ import annotations

import torch
from torch import nn

from igmu_lightning.artifacts import read_run_record
from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.results import by_aspect, exact
from igmu_lightning.evaluation.tasks import TaskRule
from igmu_lightning.metrics import SampleRate
from igmu_lightning.metrics.fid import FID
from igmu_lightning.metrics.paired import FeatureDistance, TimmFeatureMaps

FID_OFF = "fid_features is null"  # why an FID that applies was skipped


class Scorecard:
    """One model's metrics (``aspect.metric`` -> summary) and the ones skipped, with why.

    Args:
        rule: the task table's rule of the category; a metric it does not list is an error.
        category: the rule's name, for that error.
        seed: the seed of every bootstrap interval.
    """

    def __init__(self, rule: TaskRule, category: str, seed: int) -> None:
        self.rule, self.category, self.seed = rule, category, seed
        self.metrics: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}

    def _admit(self, name: str) -> None:
        if not self.rule.allows(name):
            raise IGMUError(f"metric '{name}' is not in the task table for {self.category} erasures: "
                            f"add it to TASKS['{self.category}'].metrics in igmu_lightning/evaluation/tasks.py")  # fmt: skip

    def add(self, name: str, summary: dict) -> None:
        """A metric computed elsewhere (CSDR, an exact count)."""
        self._admit(name)
        self.metrics[name] = summary

    def skip(self, name: str, reason: str) -> None:
        """A metric that applies but could not be computed: the results say why."""
        self._admit(name)
        self.skipped[name] = reason

    def rate(self, name: str, hits: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """The share of images where ``hits`` (0/1 per image) holds; ``ids``: each image's prompt,
        the clusters of the interval. Target rates, accuracies and subject-kept rates alike."""
        metric = SampleRate()
        metric.update(hits, ids)
        self.add(name, metric.summary(self.seed))

    def target_rate(self, name: str, predictions: torch.Tensor, target: int, ids: torch.Tensor | None = None) -> None:
        """The share of images a judge assigns to the target class."""
        self.rate(name, torch.as_tensor(predictions).flatten() == target, ids)

    def fid(self, name: str, features: nn.Module, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> None:
        """FID of fake images against real ones in ``features``' space, fed in ``parts`` of
        (real, fake, order); ``order``: each pair's position in the whole set, so the bootstrap does
        not depend on how processes split it (None: as fed)."""
        fid = FID(feature=features)
        for real, fake, order in parts:
            fid.update(real, real=True, order=order)
            fid.update(fake, real=False, order=order)
        self.add(name, fid.summary(self.seed))

    def closeness(
        self,
        suffix: str,
        ours: torch.Tensor,
        refs: torch.Tensor,
        ids: torch.Tensor | None,
        fid_features: nn.Module | None,
        distance: TimmFeatureMaps | None,
        order: torch.Tensor | None = None,
    ) -> None:
        """``preservation.fid_<suffix>`` and ``preservation.feature_distance_<suffix>`` of images
        paired with the original's (same prompt and seed); a missing feature network skips its metric."""
        if fid_features is None:
            self.skip(f"preservation.fid_{suffix}", FID_OFF)
        else:
            self.fid(f"preservation.fid_{suffix}", fid_features, [(refs, ours, order)])
        if distance is not None:
            metric = FeatureDistance(distance)
            metric.update(ours, refs, ids)
            self.add(f"preservation.feature_distance_{suffix}", metric.summary(self.seed))

    def efficiency(self, model: Backbone, original: Backbone) -> None:
        """Parameters changed against the original, and the training run's wall time and peak
        memory from its run record (``artifacts.read_run_record``), or why they are missing."""
        count, fraction = changed_parameters(model, original)
        self.add("efficiency.params_changed", exact(count))
        self.add("efficiency.params_changed_share", exact(round(fraction, 8)))
        cost, missing = read_run_record(model.source)
        for key in ("wall_time_s", "peak_memory_mb"):
            if key in cost:
                self.add(f"efficiency.{key}", exact(cost[key]))
            else:
                self.skip(f"efficiency.{key}", missing)

    def result(self) -> dict:
        """``{"aspects": {...}}``, with ``"skipped": {metric: why}`` when any was skipped."""
        result = {"aspects": by_aspect(self.metrics)}
        if self.skipped:
            result["skipped"] = dict(sorted(self.skipped.items()))
        return result


def changed_parameters(model: Backbone, original: Backbone) -> tuple[int, float]:
    """(count, share) of weight elements that differ from the original model's."""
    theirs = original.state_dict()
    changed = total = 0
    for name, tensor in model.state_dict().items():
        total += tensor.numel()
        if name not in theirs or theirs[name].shape != tensor.shape:
            changed += tensor.numel()
        else:
            changed += int((tensor != theirs[name].to(tensor.device, tensor.dtype)).sum())
    return changed, changed / max(total, 1)


def training_cost(model: Backbone) -> dict:
    """``efficiency.wall_time_s`` and ``efficiency.peak_memory_mb`` of the run that made ``model``,
    where its run record has them (empty otherwise)."""
    cost, _ = read_run_record(model.source)
    return {f"efficiency.{key}": exact(value) for key, value in cost.items()}
