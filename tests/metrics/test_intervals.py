"""Intervals against scipy (an independent implementation of Wilson's interval) and against
values worked out by hand."""

import pytest
import torch
from scipy.stats import binomtest

from igmu_lightning.metrics import (
    ClassRate,
    LabelAccuracy,
    mean_summary,
    prompts_for_half_width,
    rate_summary,
    wilson_interval,
)
from igmu_lightning.metrics.intervals import design_effect

Z2 = 1.959963984540054**2


def scipy_wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


@pytest.mark.parametrize("k,n", [(0, 1), (0, 16), (16, 16), (3, 10), (32, 64), (1, 385), (250, 300)])
def test_wilson_matches_scipy(k, n):
    assert wilson_interval(k, n) == pytest.approx(scipy_wilson(k, n), abs=1e-12)


@pytest.mark.smoke
def test_a_rate_of_16_of_16_is_not_certain():
    # by hand: at p = 1 the lower end is n / (n + z^2) = 16 / 19.8415 = 0.8064
    record = rate_summary(torch.ones(16))
    assert record["ci_method"] == "wilson" and record["n"] == 16
    assert record["ci95"][0] == pytest.approx(0.8064, abs=1e-4) and record["ci95"][0] < 0.85
    rate = ClassRate(2)
    rate.update(torch.full((16,), 2))
    assert rate.summary()["ci95"] == record["ci95"]
    accuracy = LabelAccuracy()
    accuracy.update(torch.zeros(16), torch.ones(16))  # 0 of 16: [0, 1 - 0.8064]
    assert accuracy.summary()["ci95"][1] == pytest.approx(1 - 0.8064, abs=1e-4)


def test_prompts_for_a_half_width_by_hand():
    # Wilson's half-width at p = 0.5 is z / (2 sqrt(n + z^2)): n >= z^2 / (4 h^2) - z^2
    assert prompts_for_half_width(0.05) == 381  # 384.15 - 3.84 = 380.3
    assert prompts_for_half_width(0.12) == 63  # 66.69 - 3.84 = 62.85
    assert prompts_for_half_width(0.1) == 93  # 96.04 - 3.84 = 92.2
    # scipy: 46 of 92 is wider than +-0.1, 47 of 94 is not
    lo, hi = scipy_wilson(46, 92)
    assert (hi - lo) / 2 > 0.1
    lo, hi = scipy_wilson(47, 94)
    assert (hi - lo) / 2 <= 0.1
    with pytest.raises(ValueError):
        prompts_for_half_width(0.5)


def test_8_prompts_of_4_seeds_all_present_keep_a_lower_bound_below_one():
    groups = torch.arange(8).repeat_interleave(4)
    record = rate_summary(torch.ones(32), groups)
    assert record["ci_method"] == "cluster_bootstrap_prompts" and record["n"] == 32
    # nothing shows how alike a prompt's seeds are: they count as copies, Wilson at n = 8 prompts
    assert record["ci95"][0] == pytest.approx(8 / (8 + Z2), abs=1e-6)  # 0.676
    assert record["ci95"][0] < scipy_wilson(32, 32)[0] - 0.2  # the naive lower end is 0.893


def test_cluster_interval_is_wider_when_seeds_of_a_prompt_agree():
    groups = torch.arange(8).repeat_interleave(4)
    values = (torch.arange(8) % 2).float().repeat_interleave(4)  # 4 prompts always, 4 never
    lo, hi = rate_summary(values, groups)["ci95"]
    naive_lo, naive_hi = scipy_wilson(16, 32)
    assert hi - lo > 1.5 * (naive_hi - naive_lo)
    # the same outcomes, independent of the prompt (each prompt 2 of 4): no inflation
    mixed = torch.tensor([1.0, 0, 1, 0]).repeat(8)
    assert design_effect(mixed, groups) == 1.0
    assert rate_summary(mixed, groups)["ci95"] == pytest.approx(scipy_wilson(16, 32), abs=1e-6)


def test_design_effect_by_hand():
    # clusters of 2: totals 2, 1, 0, 0, p = 3/8; between-cluster variance 4/3 * 2.75 / 64,
    # binomial variance (3/8)(5/8)/8: ratio 5632 / 2880
    values = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 0])
    assert design_effect(values, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) == pytest.approx(5632 / 2880)


def test_intervals_ignore_sample_order_and_need_a_repeated_prompt():
    groups = torch.arange(6).repeat_interleave(3)
    values = torch.tensor([1.0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1, 0])
    order = torch.randperm(18, generator=torch.Generator().manual_seed(3))
    assert rate_summary(values[order], groups[order]) == rate_summary(values, groups)
    assert rate_summary(values, torch.arange(18)) == rate_summary(values)  # one image per prompt: Wilson
    with pytest.raises(ValueError, match="group ids"):
        rate_summary(values, groups[:5])


def test_continuous_means_keep_the_bootstrap():
    values = torch.linspace(0, 10, 40)
    plain = mean_summary(values)
    assert plain["ci_method"] == "percentile_bootstrap" and plain["ci95"][0] < 5 < plain["ci95"][1]
    clustered = mean_summary(values, torch.arange(40) // 4)
    assert clustered["ci_method"] == "cluster_bootstrap_prompts"
    # neighbours share a prompt: resampling prompts spreads the mean more than resampling images
    assert clustered["ci95"][1] - clustered["ci95"][0] > plain["ci95"][1] - plain["ci95"][0]
