"""Percentile bootstrap confidence intervals, deterministic for a given seed."""

from __future__ import annotations

from collections.abc import Callable

import torch


def bootstrap_ci(
    values: torch.Tensor,
    statistic: Callable[[torch.Tensor], torch.Tensor] | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """(lo, hi) of the ``level`` percentile-bootstrap interval of ``statistic`` (default: the mean)
    over the first dimension of ``values``. One value gives a zero-width interval."""
    n = len(values)
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (resamples, n), generator=generator)
    if statistic is None:
        stats = values.double()[index].mean(dim=1)
    else:
        stats = torch.stack([statistic(values[row]) for row in index]).double()
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(lo), float(hi)


def summary(values: torch.Tensor, seed: int = 0, resamples: int = 1000) -> dict:
    """``{"value", "ci95", "n", "ci_method"}`` of the mean of per-sample values, as the results JSON
    stores it, with a percentile-bootstrap interval (for continuous values; rates take
    ``intervals.rate_summary``, whose interval is not degenerate at 0 or 1)."""
    values = values.detach().double().cpu().flatten()
    lo, hi = bootstrap_ci(values, resamples=resamples, seed=seed)
    mean = round(float(values.mean()), 6)
    return {"value": mean, "ci95": [round(lo, 6), round(hi, 6)], "n": len(values), "ci_method": "percentile_bootstrap"}
