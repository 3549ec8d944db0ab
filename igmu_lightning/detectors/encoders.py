"""Image encoders for content detectors (not the diffusion ``Backbone``): any timm model, or CLIP's
vision tower (frozen) for SD-scale use, each mapping images in [0, 1] to one feature vector per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igmu_lightning.errors import IGMUError


class FeatureExtractor(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> features (B, num_features)."""

    num_features: int

    def config(self) -> dict:
        """Plain data that rebuilds this extractor (stored beside the detector's weights)."""
        raise NotImplementedError


class TimmFeatures(FeatureExtractor):
    """A timm model without its classifier, fed images resized to ``input_size`` and normalised
    with the model's own mean and std.

    Args:
        name: timm model name (``test_resnet``, ``resnet50``, ``vit_base_patch16_224``...).
        input_size: side the images are resized to (None: as given).
        pretrained: load timm's pretrained weights (needs the hub; off for the world).
    """

    def __init__(self, name: str = "test_resnet", input_size: int | None = 64, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        try:
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise IGMUError(f"timm has no model '{name}': see timm.list_models()") from err
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5,) * 3)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5,) * 3)).view(1, 3, 1, 1), persistent=False)
        self.name, self.input_size, self.pretrained = name, input_size, pretrained
        self.num_features = self.model.num_features

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resized to ``input_size`` and normalised: what ``self.model`` takes."""
        if self.input_size and images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(images))

    def config(self) -> dict:
        return {"kind": "timm", "name": self.name, "input_size": self.input_size}


class ClipVisionFeatures(FeatureExtractor):
    """CLIP's projected image embedding (512-d for ViT-B/32), frozen, as IGMU's detectors use.

    Args:
        path: hub id or local folder of a transformers CLIP model.
    """

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, path: str = "openai/clip-vit-base-patch32") -> None:
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        from igmu_lightning.backbone.loader import resolve_model_source

        source, local_only = resolve_model_source(path, ("config.json",), "transformers model")
        try:
            self.model = CLIPVisionModelWithProjection.from_pretrained(source, local_files_only=local_only)
        except OSError as err:
            raise IGMUError(f"cannot load CLIP vision model '{path}': {str(err).splitlines()[0]}") from None
        self.model.requires_grad_(False).eval()
        self.path, self.size = path, self.model.config.image_size
        self.num_features = self.model.config.projection_dim
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(images, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
        return self.model(pixel_values=(images - self.mean) / self.std).image_embeds

    def config(self) -> dict:
        return {"kind": "clip", "path": self.path}


def build_features(config: dict) -> FeatureExtractor:
    kind = config.get("kind")
    if kind == "timm":
        return TimmFeatures(config["name"], config.get("input_size"))
    if kind == "clip":
        return ClipVisionFeatures(config["path"])
    raise IGMUError(f"unknown detector encoder kind '{kind}' (expected timm or clip)")
