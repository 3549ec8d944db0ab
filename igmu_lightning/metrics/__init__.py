"""EvalIGMU metrics as torchmetrics ``Metric``s with per-sample states and bootstrap CIs."""

from igmu_lightning.metrics.bootstrap import bootstrap_ci, summary
from igmu_lightning.metrics.rates import ClassRate, LabelAccuracy, SampleRate

__all__ = ["ClassRate", "LabelAccuracy", "SampleRate", "bootstrap_ci", "summary"]
