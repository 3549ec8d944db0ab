"""Generating the images an evaluation scores, with a disk cache of each model's images keyed by
(model hash, prompt, seed, sampler settings): ten methods compared against one original model
share one set of reference images, and a rerun regenerates nothing."""

from __future__ import annotations

from dataclasses import asdict

import torch

from igmu_lightning.artifacts.images import ImageCache, model_fingerprint
from igmu_lightning.sampling import Sampler, to_uint8


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
    for i, image in enumerate(found):
        if image is not None:  # listed in the cache's manifest if it was cached before the manifest was
            cache.record(folder, prompts[i], seeds[i])
    todo = [i for i, image in enumerate(found) if image is None]
    if todo:
        new = sampler.generate([prompts[i] for i in todo], [seeds[i] for i in todo]).images
        for i, image in zip(todo, new):
            cache.save(folder, prompts[i], seeds[i], image)
            found[i] = quantise(image)
    return torch.stack(found)
