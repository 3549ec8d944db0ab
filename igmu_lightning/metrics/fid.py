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

from igmu_lightning.errors import IGMUError


class FIDNumericsWarning(UserWarning):
    """The matrix square root or the distance itself came out further from a real, non-negative
    number than rounding explains: the value is unreliable (too few images for the feature size)."""


# pytorch-fid's tolerance: the imaginary part of (S_r S_f)^(1/2)'s diagonal it lets pass silently.
IMAGINARY_ATOL = 1e-3


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of Gaussians fitted to two feature
    sets (N, D) (Heusel et al., 2017). Needs at least two samples in each set.

    As pytorch-fid, the imaginary part of the matrix square root (numerical noise: the product of
    two covariances has real, non-negative eigenvalues) is dropped; when it is significant (any
    diagonal entry's beyond 1e-3, pytorch-fid's tolerance, where it raises) a
    ``FIDNumericsWarning`` says so. A negative distance beyond rounding is clamped at 0 with the
    same warning. Both happen with fewer images than feature dimensions."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("FID needs at least two images on each side")
    real, fake = real.double().cpu().numpy(), fake.double().cpu().numpy()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    with warnings.catch_warnings():  # scipy's "singular matrix" note: the checks below are ours
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(cov_r @ cov_f)
    hint = f"({len(real)} and {len(fake)} images for {real.shape[1]} feature dimensions; use more images or fewer features)"
    if np.iscomplexobj(covmean):
        imaginary = float(np.abs(np.diagonal(covmean).imag).max())
        if imaginary > IMAGINARY_ATOL:
            warnings.warn(
                f"FID: the matrix square root has an imaginary part of {imaginary:.3g} on its diagonal, beyond "
                f"pytorch-fid's tolerance {IMAGINARY_ATOL}; it was dropped and the value is unreliable {hint}",
                FIDNumericsWarning,
                stacklevel=2,
            )
        covmean = covmean.real
    value = float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r) + np.trace(cov_f) - 2 * np.trace(covmean))
    scale = float(np.trace(cov_r) + np.trace(cov_f))
    if value < -1e-6 * max(scale, 1.0):
        warnings.warn(f"FID came out negative ({value:.6g}) and was clamped at 0: the value is unreliable {hint}",
                      FIDNumericsWarning, stacklevel=2)  # fmt: skip
    return max(value, 0.0)


def inception_missing(err: BaseException) -> str:
    """The one-line message for FID Inception weights that could not be fetched."""
    from torch.hub import get_dir

    reason = str(getattr(err, "reason", "") or err).splitlines()[0] if str(err) else type(err).__name__
    return (
        f"cannot fetch the FID Inception weights ({reason}): pre-fetch them where torch-fidelity looks "
        f"({get_dir()}/checkpoints/{INCEPTION_FILE}, from {INCEPTION_URL}), give fid_features a local "
        "detector folder whose backbone computes the features, or set fid_features: null to skip FID"
    )


INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


class InceptionFeatures(nn.Module):
    """torchmetrics' FID Inception v3 (pool features) on images in [0, 1]; its weights are fetched
    by torch-fidelity on first use."""

    def __init__(self, dims: int = 2048) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(dims)])
        except OSError as err:  # URLError, a refused connection, a partial file
            raise IGMUError(inception_missing(err)) from None

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
        with warnings.catch_warnings():  # compute() only syncs here; the value below warns once
            warnings.simplefilter("ignore", FIDNumericsWarning)
            self.compute()
        with self.sync_context():
            real, fake = self.features()
        value = frechet_distance(real, fake)
        generator = torch.Generator().manual_seed(seed)
        stats = []
        with warnings.catch_warnings():  # the value's own warning (above) says it once
            warnings.simplefilter("ignore", FIDNumericsWarning)
            for _ in range(resamples):
                i = torch.randint(0, len(real), (len(real),), generator=generator)
                j = i if len(real) == len(fake) else torch.randint(0, len(fake), (len(fake),), generator=generator)
                stats.append(frechet_distance(real[i], fake[j]))
        lo, hi = np.percentile(stats, [2.5, 97.5])
        ci95 = [round(float(lo), 6), round(float(hi), 6)]
        return {"value": round(value, 6), "ci95": ci95, "n": len(fake), "ci_method": "percentile_bootstrap"}
