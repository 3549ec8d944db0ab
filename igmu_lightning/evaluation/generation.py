"""Generating the images an evaluation scores, with a disk cache of each model's images keyed by
(model hash, prompt, seed, sampler settings): ten methods compared against one original model
share one set of reference images, and a rerun regenerates nothing."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from igmu_lightning.backbone import Backbone
from igmu_lightning.data.captioned_folder import load_image
from igmu_lightning.sampling import Sampler, to_uint8
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


def autocast_dtype(device: torch.device) -> str | None:
    """The dtype autocast runs at on ``device`` right now (``evaluate.py --precision bf16-mixed``)."""
    if torch.is_autocast_enabled(device.type):
        return str(torch.get_autocast_dtype(device.type))
    return None


def generate_images(
    sampler: Sampler, prompts: list[str], seeds: list[int], cache: ImageCache | None = None, model: str | None = None
) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1], quantised to 8 bits as saved images are; cached ones are
    read back, the rest generated in batches and stored."""
    quantise = lambda x: to_uint8(x).float() / 255  # noqa: E731
    if cache is None:
        return quantise(sampler.generate(prompts, seeds).images)
    settings = asdict(sampler.settings)
    autocast = autocast_dtype(sampler.backbone.device)
    if autocast is not None:  # mixed precision changes the images: they get a folder of their own
        settings["autocast"] = autocast
    folder = cache.folder(model or model_fingerprint(sampler.backbone), settings)
    found = [cache.load(folder, p, s) for p, s in zip(prompts, seeds)]
    todo = [i for i, image in enumerate(found) if image is None]
    if todo:
        new = sampler.generate([prompts[i] for i in todo], [seeds[i] for i in todo]).images
        for i, image in zip(todo, new):
            cache.save(folder, prompts[i], seeds[i], image)
            found[i] = quantise(image)
    return torch.stack(found)
