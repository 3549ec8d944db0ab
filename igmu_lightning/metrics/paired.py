"""Metrics on matched image pairs (an unlearned model's image and the original model's image of
the same prompt and seed). Pairs are matched by key, never by file or list order (IGMU's LPIPS
paired two unsorted glob lists)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from igmu_lightning.metrics.rates import SampleMean


def match_pairs(left: Sequence[Hashable], right: Sequence[Hashable]) -> list[tuple[int, int]]:
    """Index pairs (i, j) with left[i] == right[j], in the order of ``left``. Every key must be
    unique on each side and present on both: an unmatched image is an error, not a silent skip."""
    if len(set(left)) != len(left) or len(set(right)) != len(right):
        raise ValueError("pair keys must be unique on each side")
    where = {key: j for j, key in enumerate(right)}
    missing = [key for key in left if key not in where]
    extra = set(right) - set(left)
    if missing or extra:
        raise ValueError(f"unmatched images: {len(missing)} only on the left (e.g. {missing[:1]}), {len(extra)} only on the right")
    return [(i, where[key]) for i, key in enumerate(left)]


class FeatureDistance(SampleMean):
    """Per pair: sum over layers of the spatial mean of squared differences between channel-unit-
    normalised feature maps, the LPIPS recipe without its learned layer weights (Zhang et al.,
    2018, "baseline" variant), on any network that returns a list of feature maps. Lower is closer.

    update(images, references, groups=None): matched pairs, (N, 3, H, W) in [0, 1]; groups: their
    prompt ids (a continuous mean: percentile bootstrap, over prompts with several seeds each).
    """

    higher_is_better = False

    def __init__(self, layers: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.layers = layers.requires_grad_(False).eval()

    def update(  # type: ignore[override]
        self, images: torch.Tensor, references: torch.Tensor, groups: torch.Tensor | None = None
    ) -> None:
        if images.shape != references.shape:
            raise ValueError(f"pairs differ in shape: {tuple(images.shape)} vs {tuple(references.shape)}")
        with torch.no_grad():
            distance = torch.zeros(len(images), device=images.device)
            for a, b in zip(self.layers(images.float()), self.layers(references.float())):
                a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
                distance += (a - b).pow(2).sum(1).flatten(1).mean(1)
        self.outcomes.append(distance)
        self._add_groups(groups, len(distance), distance.device)


class TimmFeatureMaps(nn.Module):
    """The intermediate feature maps of a timm model (``features_only``) on images in [0, 1]."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor  # a detectors.TimmFeatures

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.extractor.model.forward_intermediates(self.extractor.prepare(images), intermediates_only=True)
