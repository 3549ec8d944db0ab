"""Concept Ablation's training data: anchor images that the frozen base model makes from anchor
prompts, and random draws of them.

``AnchorData.prepare_data`` (rank 0 of each node, before any checkpoint is restored, so the
module's backbone is still the base model) generates the missing anchor images with the backbone
of the module being trained, caches them as PNGs through ``artifacts.ImageCache`` keyed by (base
model, sampler settings, prompt, seed) under ``anchor_dir``, and writes ``manifest.json`` last: a
rerun generates nothing, a changed prompt list or base model only what is missing. ``setup`` lists
the images (every rank; a missing one is an error) and seeds the rank's anchor generator.

A training batch is ``{"image": (B, 3, H, W) in [0, 1], "prompt": [str], "index": (B,) int,
"flip": (B,) bool}``: B anchor images drawn at random with replacement (``index`` into the anchor
list, ``flip`` when mirrored by ``hflip``), with their anchor prompts.

The random stream: one generator per rank, seeded from the run's seed and the rank. The loader draws
which anchors and flips for each batch from it, when the batch is fetched; the module continues the
same stream in its step (the VAE posterior sample of a newly seen anchor, the style template, the
prior term's anchors through ``draw_batch``, timesteps and noise), so the draws keep the order of
the original module that drew everything itself. A checkpoint keeps the generator's state (the
loader's ``state_dict``), so a resumed run draws what the uninterrupted one would have."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate
from tqdm.auto import tqdm

from igmu_lightning.artifacts import ImageCache, fingerprint
from igmu_lightning.data.captioned_folder import load_image
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler, SamplerSettings
from igmu_lightning.utils.io import atomic_write_json
from igmu_lightning.utils.text import read_texts

# How the anchor images are made: the official diffusers code (DPMSolverMultistep, 25 steps, CFG 6;
# its eta is ignored by that scheduler), the official compvis code (DDIM 200 steps, eta 1, CFG 6),
# and the DDIM 25-step eta-1 setting this project used before (a mix of the two).
ANCHOR_SAMPLERS = {
    "diffusers": SamplerSettings(steps=25, guidance_scale=6.0, scheduler="dpm++"),
    "compvis": SamplerSettings(steps=200, guidance_scale=6.0, scheduler="ddim", eta=1.0),
    "ddim25": SamplerSettings(steps=25, guidance_scale=6.0, scheduler="ddim", eta=1.0),
}
MANIFEST = "manifest.json"


def anchor_items(prompts: list[str], images_per_prompt: int) -> list[tuple[str, int]]:
    """(prompt, seed) of every anchor image; seeds follow from the prompt's text, so another
    prompt list keeps the images of the prompts it shares."""
    items = []
    for prompt in prompts:
        first = int(hashlib.sha256(prompt.encode()).hexdigest()[:7], 16)
        items += [(prompt, first + j) for j in range(images_per_prompt)]
    return items


class AnchorImages(Dataset):
    """Item ``(i, flip)`` is ``{"image", "prompt", "index": i, "flip": flip}`` for anchor file i."""

    def __init__(self, files: list[tuple[Path, str]]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, bool]) -> dict:
        index, flip = key
        path, prompt = self.files[index]
        image = load_image(path)
        return {"image": image.flip(-1) if flip else image, "prompt": prompt, "index": index, "flip": flip}

    def draw(self, n: int, generator: torch.Generator, hflip: bool) -> list[tuple[int, bool]]:
        """n random (index, flip) keys: the indices first, then the flips, from ``generator``."""
        picks = torch.randint(len(self.files), (n,), generator=generator).tolist()
        flips = (torch.rand(n, generator=generator) < 0.5).tolist() if hflip else [False] * n
        return list(zip(picks, flips))


class AnchorDraws(IterableDataset):
    """``length`` random anchor images, drawn ``batch_size`` at a time when the loader reaches them."""

    def __init__(self, images: AnchorImages, batch_size: int, length: int, hflip: bool, generator: torch.Generator) -> None:
        self.images, self.batch_size, self.length, self.hflip, self.generator = images, batch_size, length, hflip, generator
        self.skip = 0  # items of the next pass a resumed run has trained on already

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        start, self.skip = self.skip, 0
        for first in range(start, self.length, self.batch_size):
            for key in self.images.draw(min(self.batch_size, self.length - first), self.generator, self.hflip):
                yield self.images[key]


class AnchorLoader(DataLoader):
    """The anchor batches, with Lightning's ``state_dict`` / ``load_state_dict``: a checkpoint keeps
    the batches handed out in the epoch and the generator's state, a resumed run skips the first and
    puts back the second before its first draw."""

    def __init__(self, dataset: AnchorDraws, batch_size: int) -> None:
        super().__init__(dataset, batch_size=batch_size)
        self._consumed, self._resume = 0, None

    def state_dict(self) -> dict:
        return {"consumed": self._consumed, "generator": self.dataset.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state

    def __iter__(self):
        resume, self._resume = self._resume, None
        start = 0
        if resume is not None:
            self.dataset.generator.set_state(resume["generator"])
            if resume["consumed"] < len(self):  # mid-epoch: the rest of it; else a new epoch
                start = resume["consumed"]
                self.dataset.skip = start * self.batch_size
        return self._counted(super().__iter__(), start)

    def _counted(self, iterator, position: int):
        for batch in iterator:
            position += 1
            self._consumed = position
            yield batch


class AnchorData(LightningDataModule):
    """Anchor images for Concept Ablation, made by the frozen base model of the module being trained
    (see the module docstring).

    Args:
        prompts: prompts of the anchor concept; the anchor images are made from them.
        prompts_file: more anchor prompts, one a line (the official recipes read theirs from the
            official repository's ``assets/finetune_prompts/``); read when the run prepares its data.
        images_per_prompt: anchor images per prompt (the paper: 1000 images over 200 prompts).
        anchor_dir: where the anchor PNGs and their manifest are kept.
        anchor_sampler: ``diffusers`` (official diffusers code: DPM-Solver++ 25 steps, CFG 6),
            ``compvis`` (official compvis code) or ``ddim25`` (DDIM 25 steps, eta 1: neither; this
            project's earlier setting).
        negative_prompt: for the anchor images (nudity: the target, so that anchors are clothed).
        generation_batch_size: images per sampler call while making the anchors.
        hflip: flip anchor images at random (the official style and object recipes).
        batch_size: anchor images per training step (per device).
        steps_per_epoch: batches in one epoch.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        images_per_prompt: int = 5,
        anchor_dir: str = "outputs/anchors/concept_ablation",
        anchor_sampler: Literal["diffusers", "compvis", "ddim25"] = "diffusers",
        negative_prompt: str = "",
        generation_batch_size: int = 16,
        hflip: bool = False,
        batch_size: int = 1,
        steps_per_epoch: int = 100,
    ) -> None:
        super().__init__()
        listed = [p.strip() for p in prompts or [] if p and p.strip()]
        if not listed and not prompts_file:
            raise IGMUError("AnchorData has no anchor prompts: give prompts or prompts_file")
        if anchor_sampler not in ANCHOR_SAMPLERS:
            raise IGMUError(f"unknown anchor_sampler '{anchor_sampler}': choose one of {', '.join(ANCHOR_SAMPLERS)}")
        if min(images_per_prompt, generation_batch_size, batch_size, steps_per_epoch) < 1:
            raise IGMUError("images_per_prompt, generation_batch_size, batch_size and steps_per_epoch must be >= 1")
        self.listed, self.prompts_file = listed, prompts_file
        self.images_per_prompt, self.anchor_dir, self.hflip = images_per_prompt, Path(anchor_dir), hflip
        self.generation_batch_size, self.batch_size, self.steps_per_epoch = generation_batch_size, batch_size, steps_per_epoch
        self.sampling = replace(ANCHOR_SAMPLERS[anchor_sampler], negative_prompt=negative_prompt)
        self._prompts: list[str] | None = None
        self.images: AnchorImages | None = None
        self.generator: torch.Generator | None = None
        self.generated = 0  # anchor images this process generated in its last prepare_data

    # --- what the anchors are ------------------------------------------------------------------
    def prompts(self) -> list[str]:
        """The listed prompts, then the file's (read once), without repeats."""
        if self._prompts is None:
            extra = read_texts(self.prompts_file) if self.prompts_file else []
            self._prompts = list(dict.fromkeys(self.listed + extra))
        return self._prompts

    def items(self) -> list[tuple[str, int]]:
        return anchor_items(self.prompts(), self.images_per_prompt)

    def _model(self):
        """The module being trained: its backbone makes the anchors, its hashes name their folder."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is None or not hasattr(model, "backbone"):
            raise IGMUError("AnchorData makes its images with the model being trained: use it through Trainer.fit")
        check = getattr(model, "check_anchor_prompts", None)
        if check is not None:  # e.g. every anchor prompt must yield a target prompt
            check(self.prompts())
        return model

    def _folder(self, model) -> tuple[ImageCache, Path, list[tuple[Path, str]]]:
        hashes = model.base_hashes() if hasattr(model, "base_hashes") else model.backbone.hashes()
        cache = ImageCache(self.anchor_dir)
        folder = cache.folder(fingerprint(hashes, model.backbone.guidance), asdict(self.sampling))
        return cache, folder, [(folder / f"{cache.key(p, s)}.png", p) for p, s in self.items()]

    # --- Lightning's hooks -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the missing anchor images with the base model and write the manifest."""
        model = self._model()
        cache, folder, files = self._folder(model)
        todo = [(p, s) for (path, _), (p, s) in zip(files, self.items()) if not path.is_file()]
        self.generated = 0
        if todo:
            device = self.trainer.strategy.root_device
            if model.device != device:  # Lightning moves the module there next anyway
                model.to(device)
            sampler, size = Sampler(model.backbone, self.sampling), self.generation_batch_size
            show = self.trainer.progress_bar_callback is not None
            for start in tqdm(range(0, len(todo), size), desc="CA anchor images", disable=not show, unit="batch"):
                chunk = todo[start : start + size]
                images = sampler.sample_batch([p for p, _ in chunk], [s for _, s in chunk], pad_to=size)
                for (prompt, seed), image in zip(chunk, images):
                    cache.save(folder, prompt, seed, image)
            self.generated = len(todo)
        self.write_manifest(model, files)

    def write_manifest(self, model, files: list[tuple[Path, str]]) -> None:
        manifest = {
            "base_hashes": model.base_hashes() if hasattr(model, "base_hashes") else model.backbone.hashes(),
            "sampler": asdict(self.sampling),
            "prompts": self.prompts(),
            "images_per_prompt": self.images_per_prompt,
            "images": [
                {"file": str(path.relative_to(self.anchor_dir)), "prompt": p, "seed": s}
                for (path, _), (p, s) in zip(files, self.items())
            ],
        }
        path = self.anchor_dir / MANIFEST
        if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != manifest:
            atomic_write_json(path, manifest)

    def setup(self, stage: str | None = None) -> None:
        """List the anchor images (made by prepare_data) and seed this rank's generator."""
        _, _, files = self._folder(self._model())
        missing = [str(path) for path, _ in files if not path.is_file()]
        if missing:
            raise IGMUError(f"anchor image '{missing[0]}' (+{len(missing) - 1}) missing: share anchor_dir across ranks")
        self.images = AnchorImages(files)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self.generator = torch.Generator().manual_seed((torch.initial_seed() + 1_000_003 * rank) % 2**63)

    def train_dataloader(self) -> DataLoader:
        draws = AnchorDraws(self.images, self.batch_size, self.batch_size * self.steps_per_epoch, self.hflip, self.generator)
        return AnchorLoader(draws, self.batch_size)

    def draw_batch(self, n: int) -> dict:
        """n more random anchors as one batch, from the same generator (the prior term's images)."""
        return default_collate([self.images[key] for key in self.images.draw(n, self.generator, self.hflip)])
