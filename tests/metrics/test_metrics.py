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
    real, fake = images.flatten(1), (images * 0.5).flatten(1)
    assert metric.compute().item() == pytest.approx(frechet_distance(real, fake), rel=1e-6)
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


def build_tiny_clip(path):
    """A random CLIP model with SD's tokenizer, saved as a hub model folder would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from igmu_lightning.backbone.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(path)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=clip_tokenizer(),
    )
    processor.save_pretrained(path)
    return path


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


def test_csdr_by_hand(tiny_clip):
    assert csdr_per_image(torch.tensor([20.0, 40.0]), torch.tensor([10.0, 40.0])).tolist() == [50.0, 0.0]
    metric = CSDR(tiny_clip)
    original, unlearned = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    prompts = [strip_concept("a nude girl", ["nude"]), strip_concept("a nude boy", ["nude"])]
    metric.update(original, unlearned, prompts)
    cs_o, cs_u = tiny_clip(original, prompts), tiny_clip(unlearned, prompts)
    expected = ((cs_o - cs_u).abs() / cs_o * 100).mean()
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-4)
