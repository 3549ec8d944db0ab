"""95% intervals for the results JSON, chosen by what the numbers are.

- A rate (per-image outcomes in [0, 1], one image per prompt): the Wilson score interval. The
  percentile bootstrap of 16/16 is [1, 1]; Wilson's is [0.806, 1].
- A rate with several images (seeds) per prompt: images of one prompt are not independent, so
  prompts are resampled with all their images (cluster bootstrap, percentile), and the interval is
  the hull of that and the Wilson interval at the effective sample size n / design effect. The
  bootstrap follows the data's real spread; the Wilson part keeps a rate at 0 or 1 from getting a
  zero-width interval and guards the bootstrap's under-coverage with few prompts. When every
  outcome is equal the data cannot show how alike a prompt's images are, so they count as copies
  (effective n = the number of prompts).
- A continuous mean (feature distance, CSDR, CLIP scores): the percentile bootstrap, over prompts
  when a prompt has several images. FID bootstraps its image pairs itself (``metrics.fid``).
"""

from __future__ import annotations

import math

import torch

from igmu_lightning.metrics.bootstrap import bootstrap_ci

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile

WILSON, CLUSTER, PERCENTILE = "wilson", "cluster_bootstrap_prompts", "percentile_bootstrap"


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson, 1927) of ``successes`` out of ``n``; both may be fractional
    (an effective sample size)."""
    if n <= 0:
        raise ValueError("Wilson interval of an empty sample")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def prompts_for_half_width(half_width: float, z: float = Z95) -> int:
    """Smallest n whose Wilson half-width is at most ``half_width`` in the worst case, p = 0.5,
    where the half-width is z / (2 sqrt(n + z^2)): n >= z^2 / (4 h^2) - z^2."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must lie in (0, 0.5), got {half_width}")
    return max(1, math.ceil(z * z / (4 * half_width**2) - z * z - 1e-9))


def _clusters(groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Each sample's cluster index 0..C-1 (clusters sorted by id, so the order of samples, e.g.
    after a sync across processes, does not matter) and C."""
    ids, index = torch.unique(groups, sorted=True, return_inverse=True)
    return index, len(ids)


def design_effect(values: torch.Tensor, groups: torch.Tensor) -> float:
    """Variance of the rate under clustering (ratio-estimator, between-cluster) over the
    independent-sample variance p(1-p)/n, clipped to [1, n / clusters]; n / clusters (images of a
    prompt count as copies) when the rate is 0 or 1 or there is one cluster."""
    values = values.double()
    index, c = _clusters(groups)
    n, p = len(values), float(values.mean())
    worst = n / c
    if c < 2 or p <= 0 or p >= 1:
        return worst
    totals = torch.zeros(c, dtype=torch.float64).index_add_(0, index, values)
    sizes = torch.bincount(index, minlength=c).double()
    clustered = c / (c - 1) * float(((totals - p * sizes) ** 2).sum()) / n**2
    return min(max(clustered / (p * (1 - p) / n), 1.0), worst)


def cluster_bootstrap_ci(values: torch.Tensor, groups: torch.Tensor, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean over all samples when whole clusters are resampled."""
    values = values.double()
    index, c = _clusters(groups)
    totals = torch.zeros(c, dtype=torch.float64).index_add_(0, index, values)
    sizes = torch.bincount(index, minlength=c).double()
    draw = torch.randint(0, c, (resamples, c), generator=torch.Generator().manual_seed(seed))
    stats = totals[draw].sum(1) / sizes[draw].sum(1)
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(lo), float(hi)


def _record(value: float, lo: float, hi: float, n: int, method: str) -> dict:
    return {"value": round(value, 6), "ci95": [round(lo, 6), round(hi, 6)], "n": n, "ci_method": method}


def _prepare(values: torch.Tensor, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    values = values.detach().double().cpu().flatten()
    if len(values) == 0:
        raise ValueError("interval of an empty sample")
    if groups is not None:
        groups = groups.detach().cpu().flatten()
        if len(groups) != len(values):
            raise ValueError(f"{len(values)} values but {len(groups)} group ids")
        if len(torch.unique(groups)) == len(values):  # one image per prompt: independent samples
            groups = None
    return values, groups


def rate_summary(values: torch.Tensor, groups: torch.Tensor | None = None, seed: int = 0, resamples: int = 1000) -> dict:
    """``{"value", "ci95", "n", "ci_method"}`` of a rate (outcomes in [0, 1]). ``groups``: each
    sample's prompt id; several samples of one prompt switch to the cluster interval."""
    values, groups = _prepare(values, groups)
    n, p = len(values), float(values.mean())
    if groups is None:
        return _record(p, *wilson_interval(p * n, n), n, WILSON)
    n_eff = n / design_effect(values, groups)
    w_lo, w_hi = wilson_interval(p * n_eff, n_eff)
    b_lo, b_hi = cluster_bootstrap_ci(values, groups, resamples, seed)
    return _record(p, min(w_lo, b_lo), max(w_hi, b_hi), n, CLUSTER)


def mean_summary(values: torch.Tensor, groups: torch.Tensor | None = None, seed: int = 0, resamples: int = 1000) -> dict:
    """``{"value", "ci95", "n", "ci_method"}`` of a continuous mean: percentile bootstrap, over
    prompts when ``groups`` gives several samples to a prompt."""
    values, groups = _prepare(values, groups)
    if groups is None:
        lo, hi = bootstrap_ci(values, resamples=resamples, seed=seed)
        return _record(float(values.mean()), lo, hi, len(values), PERCENTILE)
    lo, hi = cluster_bootstrap_ci(values, groups, resamples, seed)
    return _record(float(values.mean()), lo, hi, len(values), CLUSTER)
