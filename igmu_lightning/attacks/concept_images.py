"""Images of the erased concept for the attacks that train on them (concept inversion, relearning):
a folder of image files, a tensor, or, on the embedded world, renders of the target (the world's
"real images" of a concept, with their captions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.world.concepts import MAIN_TEMPLATES, TARGETS
from igmu_lightning.world.prompts import family_scenes
from igmu_lightning.world.render import render_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_concept_images(images: str | Path | torch.Tensor, size: int, limit: int | None = None) -> torch.Tensor:
    """(N, 3, size, size) floats in [0, 1] from a folder of image files (sorted by name, the first
    ``limit``) or a tensor (B, 3, H, W) in [0, 1], resized (bilinear, antialiased) to ``size``."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise IGMUError(f"concept images must be a tensor (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        batch = images.float()
    else:
        folder = Path(images)
        if not folder.is_dir():
            raise IGMUError(f"concept image folder '{folder}' does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise IGMUError(f"concept image folder '{folder}' holds no image ({', '.join(IMAGE_SUFFIXES)})")
        files = files[:limit] if limit else files
        batch = torch.stack([_read_image(p, size) for p in files])
    if limit:
        batch = batch[:limit]
    if batch.shape[0] == 0:
        raise IGMUError("no concept images: give at least one")
    if batch.shape[-2:] != (size, size):
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return batch.clamp(0, 1)


def _read_image(path: Path, size: int) -> torch.Tensor:
    """One image file as (3, size, size) floats in [0, 1] (bicubic resize when its size differs)."""
    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255


def world_concept_images(target: str, n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, list[str], str]:
    """``n`` renders of a world target's concept (its other factors balanced) at ``size`` px, their
    captions in the world's main templates (naming the concept's word), and that word."""
    if target not in TARGETS:
        raise IGMUError(f"unknown world target '{target}': choose one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    rng = np.random.default_rng([seed, 7_000_001])
    scenes = family_scenes(t.family, t.word, n, rng)
    images = torch.stack([render_tensor(s, size, np.random.default_rng([seed, 7_000_002, i])) for i, s in enumerate(scenes)])
    captions = [s.caption(MAIN_TEMPLATES[i % len(MAIN_TEMPLATES)]) for i, s in enumerate(scenes)]
    return images, captions, t.word


def diffusion_loss(model: Backbone, images: torch.Tensor, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The plain diffusion loss L_DM = ||eps - eps_theta(x_t, t, c)||^2 (mean) on ``images``'
    VAE latents: latents sampled from the posterior, then noise, then one uniform timestep per
    image, drawn from ``generator`` in that order (CPU draws, so every device agrees)."""
    sched = model.noise_scheduler
    with torch.no_grad():
        latents = model.encode_images(images.to(model.device), generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), generator=generator).to(latents.device)
    noisy = sched.add_noise(latents, noise, t)
    pred = model.unet(noisy, t, encoder_hidden_states=cond.to(model.dtype)).sample
    return F.mse_loss(pred.float(), noise.float())
