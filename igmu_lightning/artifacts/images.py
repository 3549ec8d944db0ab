"""Images on disk: 8-bit PNGs written atomically, and the image cache every part of the project
shares (evaluations, Concept Ablation's anchors), keyed by (model fingerprint, sampler settings,
prompt, seed). Low level: it knows backbones and the sampler's byte rounding, nothing above them."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from PIL import Image

from igmu_lightning.backbone import Backbone
from igmu_lightning.data.captioned_folder import load_image
from igmu_lightning.sampling import to_uint8
from igmu_lightning.utils.io import atomic_write_bytes


def fingerprint(hashes: dict[str, str], guidance=None) -> str:
    """Weights and sampling-time guidance: what decides a model's images besides the sampler."""
    identity = hashes if guidance is None else [hashes, guidance.to_config()]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def model_fingerprint(backbone: Backbone) -> str:
    return fingerprint(backbone.hashes(), backbone.guidance)


class ImageCache:
    """PNG files under ``root/<model>/<settings>/<key>.png`` (lossless: the cached image is the
    8-bit image every metric sees)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(prompt: str, seed: int) -> str:
        return hashlib.sha256(json.dumps([prompt, int(seed)]).encode()).hexdigest()[:32]

    def folder(self, model: str, settings: dict) -> Path:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / model[:16] / digest

    def load(self, folder: Path, prompt: str, seed: int) -> torch.Tensor | None:
        path = folder / f"{self.key(prompt, seed)}.png"
        return load_image(path) if path.is_file() else None

    def save(self, folder: Path, prompt: str, seed: int, image: torch.Tensor) -> None:
        save_png(folder / f"{self.key(prompt, seed)}.png", image)


def save_png(path: Path, image: torch.Tensor) -> None:
    """An image (3, H, W) in [0, 1] as an 8-bit PNG, written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
