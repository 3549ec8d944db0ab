"""Per-sample rates as torchmetrics ``Metric``s: every sample's 0/1 outcome is kept (state
reduced by concatenation across processes), so the value comes with its n and a bootstrap CI."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from igmu_lightning.metrics.bootstrap import summary


class SampleRate(Metric):
    """Mean of per-sample outcomes in [0, 1]: ``update(outcomes)`` with shape (N,)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better: bool | None = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("outcomes", default=[], dist_reduce_fx="cat")

    def update(self, outcomes: torch.Tensor) -> None:
        outcomes = torch.as_tensor(outcomes).float().flatten()
        if outcomes.numel() and (outcomes.min() < 0 or outcomes.max() > 1):
            raise ValueError("outcomes must lie in [0, 1]")
        self.outcomes.append(outcomes)

    def per_sample(self) -> torch.Tensor:
        """Every sample's outcome (after a sync, of every process, in rank order)."""
        if isinstance(self.outcomes, list) and not self.outcomes:
            return torch.zeros(0)
        return dim_zero_cat(self.outcomes)  # a list before syncing, one tensor after

    def compute(self) -> torch.Tensor:
        values = self.per_sample()
        if values.numel() == 0:
            raise ValueError(f"{type(self).__name__}.compute() before any update")
        return values.mean()

    def summary(self, seed: int = 0) -> dict:
        """``{"value", "ci95", "n"}`` over every sample seen on every process."""
        self.compute()  # syncs the states across processes
        with self.sync_context():
            return summary(self.per_sample(), seed)


class ClassRate(SampleRate):
    """Share of images a detector assigns to ``class_index``: the target rate on forget prompts
    (IGMU scores its binary detectors as accuracy against the constant "present" label: the same
    number) or the faithfulness of prompts asking for that class.

    update(predictions): predicted class indices (N,).
    """

    def __init__(self, class_index: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.class_index = class_index

    def update(self, predictions: torch.Tensor) -> None:
        super().update(torch.as_tensor(predictions).flatten() == self.class_index)


class LabelAccuracy(SampleRate):
    """Share of images whose predicted class equals the class their prompt asked for.

    update(predictions, labels): both (N,) class indices.
    """

    higher_is_better = True

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:  # type: ignore[override]
        predictions, labels = torch.as_tensor(predictions).flatten(), torch.as_tensor(labels).flatten()
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
        super().update(predictions == labels)
