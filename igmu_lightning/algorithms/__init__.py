"""Unlearning algorithms as LightningModules on the shared backbone."""

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.algorithms.esd import ESD

__all__ = ["ESD", "UnlearningModule"]
