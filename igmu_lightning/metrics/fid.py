"""FID with a configurable feature extractor: torchmetrics' FID Inception by default, or any
module mapping images in [0, 1] to feature vectors (a detector's backbone in the world, where
Inception weights cannot be fetched). Per-sample features are kept, for the bootstrap CI."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of Gaussians fitted to two feature
    sets (N, D) (Heusel et al., 2017). Needs at least two samples in each set."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("FID needs at least two images on each side")
    real, fake = real.double().cpu().numpy(), fake.double().cpu().numpy()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():  # few images in many dimensions: singular, still well defined
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(cov_r @ cov_f)
    if np.iscomplexobj(covmean):  # numerical noise of a PSD product
        covmean = covmean.real
    value = float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * np.trace(covmean))
    return max(value, 0.0)


class InceptionFeatures(nn.Module):
    """torchmetrics' FID Inception v3 (pool features) on images in [0, 1]; its weights are fetched
    by torch-fidelity on first use."""

    def __init__(self, dims: int = 2048) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(dims)])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.clamp(0, 1) * 255).round().to(torch.uint8))


class FID(Metric):
    """Fréchet distance between the features of reference ("real") and generated ("fake") images.

    update(images, real, order=None): images (N, 3, H, W) in [0, 1]; ``order`` (N,) optional
        positions of the images in the whole evaluation. Given with every update, the features are
        sorted by it before the bootstrap, so the CI does not depend on how several updates were
        split across processes (after a sync, states are in rank order).
    feature: a module returning (N, D) features, or an int for torchmetrics' Inception layer.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, feature: nn.Module | int = 2048, **kwargs) -> None:
        super().__init__(**kwargs)
        self.feature = InceptionFeatures(feature) if isinstance(feature, int) else feature
        self.feature.requires_grad_(False).eval()
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")
        self.add_state("real_order", default=[], dist_reduce_fx="cat")
        self.add_state("fake_order", default=[], dist_reduce_fx="cat")

    def update(self, images: torch.Tensor, real: bool, order: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            features = self.feature(images.float()).float().flatten(1)
        (self.real_features if real else self.fake_features).append(features)
        if order is not None:
            order = torch.as_tensor(order, device=features.device).long().flatten()
            if len(order) != len(features):
                raise ValueError(f"{len(features)} images but {len(order)} positions in order")
            (self.real_order if real else self.fake_order).append(order)

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, fake) features, each sorted by its ``order`` when every update gave one."""
        return self._side(self.real_features, self.real_order), self._side(self.fake_features, self.fake_order)

    @staticmethod
    def _side(features, order) -> torch.Tensor:
        features = dim_zero_cat(features)
        order = dim_zero_cat(order) if not isinstance(order, list) or order else torch.zeros(0)
        if order.numel() == 0:  # no update gave one (after a sync, an empty state is an empty tensor)
            return features
        if len(order) != len(features):
            raise ValueError("give FID.update an order with every update of a side, or with none")
        return features[order.argsort(stable=True)]

    def compute(self) -> torch.Tensor:
        return torch.tensor(frechet_distance(*self.features()))

    def summary(self, seed: int = 0, resamples: int = 200) -> dict:
        """FID with a percentile-bootstrap 95% CI. When the two sides are matched pairs (same
        length: the same prompts and seeds), pairs are resampled together."""
        self.compute()
        with self.sync_context():
            real, fake = self.features()
        value = frechet_distance(real, fake)
        generator = torch.Generator().manual_seed(seed)
        stats = []
        for _ in range(resamples):
            i = torch.randint(0, len(real), (len(real),), generator=generator)
            j = i if len(real) == len(fake) else torch.randint(0, len(fake), (len(fake),), generator=generator)
            stats.append(frechet_distance(real[i], fake[j]))
        lo, hi = np.percentile(stats, [2.5, 97.5])
        ci95 = [round(float(lo), 6), round(float(hi), 6)]
        return {"value": round(value, 6), "ci95": ci95, "n": len(fake), "ci_method": "percentile_bootstrap"}
