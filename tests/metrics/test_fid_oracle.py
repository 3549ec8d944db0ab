"""FID against the library it imitates: torchmetrics' FrechetInceptionDistance given the same
feature extractor and the same images; and the warning where the value stops being trustworthy."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from igmu_lightning.metrics.fid import FID, FIDNumericsWarning, frechet_distance
from igmu_lightning.world.concepts import Scene
from igmu_lightning.world.render import render_tensor


class SmallFeatures(nn.Module):
    """A fixed random conv net: images (N, 3, 32, 32) in [0, 1] to 12 pooled features."""

    num_features = 12

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 12, 3, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 100 * self.net(images.float())  # Inception-like magnitudes


def renders(shape: str, style: str, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    colours = ("red", "green", "blue", "yellow")
    return torch.stack([render_tensor(Scene(shape, colours[i % 4], style), 32, rng) for i in range(n)])


def test_fid_equals_torchmetrics_with_the_same_feature_extractor():
    from torchmetrics.image.fid import FrechetInceptionDistance

    features = SmallFeatures().eval()
    real = renders("triangle", "plain", 160, seed=1)  # more images than feature dimensions
    fakes = {"near": renders("triangle", "plain", 120, seed=2), "far": renders("circle", "striped", 120, seed=3)}
    values = {}
    for name, fake in fakes.items():
        ours = FID(feature=features)
        theirs = FrechetInceptionDistance(feature=features, normalize=True, input_img_size=(3, 32, 32))
        for start in range(0, 160, 50):  # several updates, as an evaluation makes them
            ours.update(real[start : start + 50], real=True)
            theirs.update(real[start : start + 50], real=True)
        ours.update(fake, real=False)
        theirs.update(fake, real=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FIDNumericsWarning)  # a well-posed case raises no alarm
            values[name] = (ours.compute().item(), theirs.compute().item())
        rel = abs(values[name][0] - values[name][1]) / abs(values[name][1])
        print(f"FID {name}: ours {values[name][0]:.6g}, torchmetrics {values[name][1]:.6g}, relative difference {rel:.2e}")
        assert values[name][0] == pytest.approx(values[name][1], rel=1e-3)
    assert values["far"][1] > 10 * values["near"][1] > 0  # distinct numbers: the comparison can fail


def test_a_significant_imaginary_square_root_warns():
    """Fewer images than feature dimensions, features in the thousands: (S_r S_f)^(1/2) comes out
    with an imaginary diagonal beyond pytorch-fid's 1e-3 (pytorch-fid raises there); we warn."""
    rng = np.random.default_rng(0)
    real, fake = (torch.from_numpy(rng.normal(size=(5, 64)) * 1000) for _ in range(2))
    with pytest.warns(FIDNumericsWarning, match=r"imaginary part of .*\(5 and 5 images for 64 feature dimensions"):
        value = frechet_distance(real, fake)
    assert value > 0
    metric = FID(feature=nn.Identity())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with pytest.warns(FIDNumericsWarning) as caught:
        metric.summary(seed=0, resamples=20)
    assert len(caught) == 1  # once for the value, not once per bootstrap resample
