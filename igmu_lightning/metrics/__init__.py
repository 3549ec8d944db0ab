"""EvalIGMU metrics as torchmetrics ``Metric``s with per-sample states and 95% intervals
(Wilson for rates, cluster bootstrap over prompts, percentile bootstrap for continuous values)."""

from igmu_lightning.metrics.bootstrap import bootstrap_ci, summary
from igmu_lightning.metrics.intervals import mean_summary, prompts_for_half_width, rate_summary, wilson_interval
from igmu_lightning.metrics.rates import ClassRate, LabelAccuracy, SampleMean, SampleRate

__all__ = [
    "ClassRate",
    "LabelAccuracy",
    "SampleMean",
    "SampleRate",
    "bootstrap_ci",
    "mean_summary",
    "prompts_for_half_width",
    "rate_summary",
    "summary",
    "wilson_interval",
]
