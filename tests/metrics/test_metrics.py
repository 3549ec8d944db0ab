"""Each metric against values computed by hand on small tensors, including the cases the
reference code gets wrong (file-order pairing, batch-mean CLIP score, prompt stripping)."""

import numpy as np
import pytest
import torch
from torch import nn

from igmu_lightning.metrics import ClassRate, LabelAccuracy, bootstrap_ci, summary
from igmu_lightning.metrics.clip_score import CSDR, ClipScorer, csdr_per_image
from igmu_lightning.metrics.fid import FID, frechet_distance
from igmu_lightning.metrics.paired import FeatureDistance, match_pairs
from igmu_lightning.utils.text import strip_concept
from tests.conftest import build_tiny_clip


def test_class_rate_and_accuracy_by_hand():
    rate = ClassRate(class_index=2)
    rate.update(torch.tensor([2, 0, 2, 1]))
    rate.update(torch.tensor([2]))
    assert rate.compute().item() == pytest.approx(3 / 5)
    assert rate.per_sample().tolist() == [1, 0, 1, 0, 1]
    acc = LabelAccuracy()
    acc.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert acc.compute().item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="differ in shape"):
        acc.update(torch.tensor([0]), torch.tensor([0, 1]))


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    values = torch.tensor([0.0] * 30 + [1.0] * 70)
    lo, hi = bootstrap_ci(values, seed=1)
    assert (lo, hi) == bootstrap_ci(values, seed=1)
    assert lo < 0.7 < hi and 0.55 < lo and hi < 0.85  # binomial sd ~0.046: ~±0.09
    # a continuous mean: a constant sample has no spread (rates take a Wilson interval instead)
    assert summary(torch.ones(5)) == {"value": 1.0, "ci95": [1.0, 1.0], "n": 5, "ci_method": "percentile_bootstrap"}


def test_frechet_distance_of_gaussians_by_hand():
    rng = np.random.default_rng(0)
    real = torch.tensor(rng.normal(0, 1, (4000, 2)))
    fake = torch.tensor(rng.normal(0, 1, (4000, 2)) * np.array([2.0, 1.0]) + np.array([3.0, 0.0]))
    # means differ by 3 in x: 9; covariances diag(1,1) vs diag(4,1): 1+1+4+1 - 2(2+1) = 1
    assert frechet_distance(real, fake) == pytest.approx(10.0, rel=0.05)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def test_fid_metric_with_a_custom_feature_extractor():
    metric = FID(feature=nn.Flatten())
    images = torch.rand(64, 1, 1, 2)
    metric.update(images, real=True)
    metric.update(images * 0.5, real=False)
    # the formula with numpy and scipy: |mu_r - mu_f|^2 + tr(S_r + S_f - 2 sqrtm(S_r S_f))
    from scipy import linalg

    real, fake = images.flatten(1).double().numpy(), (images * 0.5).flatten(1).double().numpy()
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    by_hand = ((real.mean(0) - fake.mean(0)) ** 2).sum() + np.trace(s_r + s_f - 2 * linalg.sqrtm(s_r @ s_f).real)
    assert metric.compute().item() == pytest.approx(by_hand, rel=1e-5)
    result = metric.summary(seed=0, resamples=50)
    assert result["n"] == 64 and result["ci95"][0] <= result["value"] <= result["ci95"][1] + 1e-6


def test_fid_positions_make_the_ci_independent_of_update_order():
    images = torch.rand(12, 1, 1, 2)
    in_order, shuffled = FID(feature=nn.Flatten()), FID(feature=nn.Flatten())
    in_order.update(images, real=True, order=torch.arange(12))
    in_order.update(images**2, real=False, order=torch.arange(12))
    for part in (torch.arange(6, 12), torch.arange(0, 6)):  # as two processes' states arrive, reversed
        shuffled.update(images[part], real=True, order=part)
        shuffled.update(images[part] ** 2, real=False, order=part)
    assert shuffled.summary(seed=0, resamples=30) == in_order.summary(seed=0, resamples=30)
    unordered = FID(feature=nn.Flatten())
    unordered.update(images[6:], real=True)
    unordered.update(images[:6], real=True)
    unordered.update(images[6:] ** 2, real=False)
    unordered.update(images[:6] ** 2, real=False)
    assert unordered.summary(seed=0, resamples=30)["ci95"] != in_order.summary(seed=0, resamples=30)["ci95"]
    mixed = FID(feature=nn.Flatten())
    mixed.update(images[:6], real=True, order=torch.arange(6))
    mixed.update(images[6:], real=True)
    mixed.update(images, real=False)
    with pytest.raises(ValueError, match="with every update of a side"):
        mixed.summary(seed=0, resamples=5)


def test_pairs_are_matched_by_key_not_by_order():
    left = [("a red circle", 3), ("a blue square", 1), ("a cat", 7)]
    right = [("a cat", 7), ("a red circle", 3), ("a blue square", 1)]  # another listing order
    assert match_pairs(left, right) == [(0, 1), (1, 2), (2, 0)]
    with pytest.raises(ValueError, match="unmatched"):
        match_pairs(left, right[:2])


def test_feature_distance_is_zero_for_identical_pairs_and_order_free():
    layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    class OneMap(nn.Module):
        def forward(self, x):
            return [layers(x)]

    metric = FeatureDistance(OneMap())
    a, b = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    metric.update(a, a)
    metric.update(a, b)
    values = metric.per_sample()
    assert torch.all(values[:4] == 0) and torch.all(values[4:] > 0)
    # by hand for one pair: channel-normalised maps, squared difference summed over channels, mean over space
    fa, fb = torch.nn.functional.normalize(layers(a[:1]), dim=1), torch.nn.functional.normalize(layers(b[:1]), dim=1)
    assert values[4].item() == pytest.approx((fa - fb).pow(2).sum(1).mean().item(), rel=1e-5)


def test_strip_concept_strips_each_word_once_from_one_prompt():
    assert strip_concept("a nude girl playing by the lake", ["nude", "naked"]) == "a girl playing by the lake"
    assert strip_concept("a starry harbour with Van Gogh style", ["van gogh"]) == "a starry harbour with style"
    # IGMU's ''.join(prompt.replace(w, '') for w in words) gives two copies of the prompt here
    assert strip_concept("a naked man", ["nude", "naked"]).count("man") == 1
    assert strip_concept("a nudes exhibition", ["nude"]) == "a nudes exhibition"  # whole words only


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return ClipScorer(str(build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")))


def test_clip_scores_are_per_image_not_a_batch_mean(tiny_clip):
    images = torch.rand(3, 3, 32, 32)
    prompts = ["a red circle", "a blue square", "a green cross"]
    batch = tiny_clip(images, prompts)
    alone = torch.cat([tiny_clip(images[i : i + 1], prompts[i : i + 1]) for i in range(3)])
    assert batch.shape == (3,) and torch.allclose(batch, alone, atol=1e-4)
    assert len(set(batch.tolist())) == 3  # a batch mean would give one number


def test_csdr_by_hand():
    """CSDR = mean over images of |CS(orig, p) - CS(unlearned, p)| / CS(orig, p) x 100, with known
    per-image CLIP scores (the CLIP score itself is checked against torchmetrics elsewhere)."""
    assert csdr_per_image(torch.tensor([20.0, 40.0]), torch.tensor([10.0, 40.0])).tolist() == [50.0, 0.0]
    table = {(0.1, "a girl"): 30.0, (0.9, "a girl"): 24.0, (0.2, "a boy"): 25.0, (0.8, "a boy"): 30.0}

    def scorer(images, prompts):  # a stand-in CLIP whose per-image scores are the table's
        return torch.tensor([table[(round(im.mean().item(), 1), p)] for im, p in zip(images, prompts)])

    metric = CSDR(scorer)
    original = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.2)])
    unlearned = torch.stack([torch.full((3, 4, 4), 0.9), torch.full((3, 4, 4), 0.8)])
    prompts = [strip_concept("a nude girl", ["nude"]), strip_concept("a nude boy", ["nude"])]
    assert prompts == ["a girl", "a boy"]
    metric.update(original, unlearned, prompts)
    assert metric.compute().item() == pytest.approx((6 / 30 * 100 + 5 / 25 * 100) / 2)  # 20
