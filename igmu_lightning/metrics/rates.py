"""Per-sample means and rates as torchmetrics ``Metric``s: every sample's value is kept, with an
optional cluster id (its prompt), both reduced by concatenation across processes, so the value
comes with its n and an interval fitted to what it is (``metrics.intervals``)."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from igmu_lightning.metrics.intervals import mean_summary, rate_summary


class SampleMean(Metric):
    """Mean of per-sample values with a percentile-bootstrap CI (over prompts when ``groups`` is
    given and a prompt has several samples). Subclasses append to ``outcomes`` and call
    ``_add_groups`` in their ``update``.

    update(values, groups=None): values (N,); groups (N,) integer prompt ids, given with every
    update or with none.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better: bool | None = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("outcomes", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        values = torch.as_tensor(values).float().flatten()
        self.outcomes.append(values)
        self._add_groups(groups, len(values), values.device)

    def _add_groups(self, groups: torch.Tensor | None, n: int, device: torch.device) -> None:
        if groups is None:
            return
        groups = torch.as_tensor(groups, device=device).long().flatten()
        if len(groups) != n:
            raise ValueError(f"{n} samples but {len(groups)} group ids")
        self.groups.append(groups)

    @staticmethod
    def _cat(state) -> torch.Tensor:
        if isinstance(state, list) and not state:
            return torch.zeros(0)
        return dim_zero_cat(state)  # a list before syncing, one tensor after

    def per_sample(self) -> torch.Tensor:
        """Every sample's value (after a sync, of every process, in rank order)."""
        return self._cat(self.outcomes)

    def per_sample_groups(self) -> torch.Tensor | None:
        """Every sample's prompt id, or None when no update gave them."""
        groups = self._cat(self.groups)
        if groups.numel() == 0:
            return None
        if len(groups) != len(self.per_sample()):
            raise ValueError("give group ids with every update, or with none")
        return groups

    def compute(self) -> torch.Tensor:
        values = self.per_sample()
        if values.numel() == 0:
            raise ValueError(f"{type(self).__name__}.compute() before any update")
        return values.mean()

    def _summary(self, values: torch.Tensor, groups: torch.Tensor | None, seed: int) -> dict:
        return mean_summary(values, groups, seed)

    def summary(self, seed: int = 0) -> dict:
        """``{"value", "ci95", "n", "ci_method"}`` over every sample seen on every process."""
        self.compute()  # syncs the states across processes
        with self.sync_context():
            return self._summary(self.per_sample(), self.per_sample_groups(), seed)


class SampleRate(SampleMean):
    """Mean of per-sample outcomes in [0, 1]: Wilson interval, or the cluster interval when a
    prompt has several images (``intervals.rate_summary``).

    update(outcomes, groups=None): shape (N,).
    """

    def update(self, outcomes: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        outcomes = torch.as_tensor(outcomes).float().flatten()
        if outcomes.numel() and (outcomes.min() < 0 or outcomes.max() > 1):
            raise ValueError("outcomes must lie in [0, 1]")
        super().update(outcomes, groups)

    def _summary(self, values: torch.Tensor, groups: torch.Tensor | None, seed: int) -> dict:
        return rate_summary(values, groups, seed)


class ClassRate(SampleRate):
    """Share of images a detector assigns to ``class_index``: the target rate on forget prompts
    (IGMU scores its binary detectors as accuracy against the constant "present" label: the same
    number) or the faithfulness of prompts asking for that class.

    update(predictions, groups=None): predicted class indices (N,).
    """

    def __init__(self, class_index: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.class_index = class_index

    def update(self, predictions: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        super().update(torch.as_tensor(predictions).flatten() == self.class_index, groups)


class LabelAccuracy(SampleRate):
    """Share of images whose predicted class equals the class their prompt asked for.

    update(predictions, labels, groups=None): (N,) class indices.
    """

    higher_is_better = True

    def update(  # type: ignore[override]
        self, predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None
    ) -> None:
        predictions, labels = torch.as_tensor(predictions).flatten(), torch.as_tensor(labels).flatten()
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
        super().update(predictions == labels, groups)
