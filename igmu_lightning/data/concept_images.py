"""Images of several concepts with the mask of each concept's object, served concept after concept:
MACE's LoRA stage trains one LoRA per concept on a few images of it (the official code makes 8 with
SD and segments them with Grounded-SAM).

A batch is ``{"image": (B, 3, S, S) in [0, 1], "mask": (B, 1, S, S) in [0, 1], "concept": (B,)}``;
step k of an epoch serves concept ``k // steps_per_concept`` (an image of it drawn from a generator
seeded by (seed, epoch, k)). Two sources: rendered world scenes with the renderer's exact masks, or
folders of images and precomputed masks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset, Sampler

from igmu_lightning.data.captioned_folder import load_image
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.resumable import ResumableLoader
from igmu_lightning.world.concepts import FAMILIES
from igmu_lightning.world.data import sample_scene
from igmu_lightning.world.render import render_with_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class InOrder(Sampler[int]):
    """0..n-1 in order; ``skip`` leaves the first items out of the next pass (``ResumableLoader``)."""

    def __init__(self, n: int) -> None:
        self.n, self.skip, self.epoch = n, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return iter(range(skip, self.n))

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ConceptSteps(Dataset):
    """Item k: an image of concept ``k // steps_per_concept``, with its mask and the concept index."""

    def __init__(
        self, images: list[list[tuple[torch.Tensor, torch.Tensor]]], steps_per_concept: int, seed: int, sampler: InOrder
    ) -> None:
        self.images, self.steps, self.seed, self.sampler = images, steps_per_concept, seed, sampler

    def __len__(self) -> int:
        return len(self.images) * self.steps

    def __getitem__(self, k: int) -> dict:
        concept = k // self.steps
        pool = self.images[concept]
        image, mask = pool[int(np.random.default_rng([self.seed, self.sampler.epoch, k]).integers(len(pool)))]
        return {"image": image, "mask": mask, "concept": concept}


class ConceptImageData(LightningDataModule):
    """Shared part: ``steps_per_concept`` batches of each concept in turn; subclasses load the images."""

    def __init__(self, steps_per_concept: int, batch_size: int = 1, seed: int = 0) -> None:
        super().__init__()
        if steps_per_concept < 1 or batch_size < 1:
            raise IGMUError(f"steps_per_concept and batch_size must be >= 1, got {steps_per_concept} and {batch_size}")
        self.steps_per_concept, self.batch_size, self.seed = steps_per_concept, batch_size, seed
        self.images: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    @property
    def n_concepts(self) -> int:
        raise NotImplementedError

    def load(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.images is None:
            self.images = self.load()

    def train_dataloader(self) -> ResumableLoader:
        self.setup("fit")
        sampler = InOrder(self.n_concepts * self.steps_per_concept * self.batch_size)
        steps = ConceptSteps(self.images, self.steps_per_concept * self.batch_size, self.seed, sampler)
        return ResumableLoader(steps, self.batch_size, sampler=sampler)


class WorldConceptImages(ConceptImageData):
    """Rendered world scenes of each concept word (its family takes that value, the other factors are
    random) with the renderer's exact mask of the shape.

    Args:
        concepts: world words, e.g. ["triangle", "striped"] (each a value of a family of
            ``world.concepts.FAMILIES``).
        n_images: scenes per concept (the official code makes 8 per concept).
        steps_per_concept: batches of each concept, in turn.
        image_size: pixel side (32 for the shipped model).
    """

    def __init__(self, concepts: list[str], n_images: int = 8, steps_per_concept: int = 50, image_size: int = 32,
                 batch_size: int = 1, seed: int = 0) -> None:  # fmt: skip
        super().__init__(steps_per_concept, batch_size, seed)
        families = {value: family for family, values in FAMILIES.items() for value in values}
        unknown = [c for c in concepts if c not in families]
        if not concepts or unknown:
            raise IGMUError(
                f"world concepts {unknown or concepts} are not world words: choose values of {', '.join(FAMILIES)}"
            )
        if n_images < 1:
            raise IGMUError(f"n_images must be >= 1, got {n_images}")
        self.concepts, self.families = list(concepts), [families[c] for c in concepts]
        self.n_images, self.image_size = n_images, image_size

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

    def load(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        pools = []
        for c, (concept, family) in enumerate(zip(self.concepts, self.families)):
            pool = []
            for i in range(self.n_images):
                rng = np.random.default_rng([self.seed, c, i])
                scene = replace(sample_scene(rng), **{family: concept})
                image, mask = render_with_mask(scene, self.image_size, rng)
                pool.append(
                    (torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255, torch.from_numpy(mask)[None])
                )
            pools.append(pool)
        return pools


class FolderConceptImages(ConceptImageData):
    """Images of each concept from a folder, with precomputed masks (any source: the official
    Grounded-SAM masks, or hand-made ones) from a second folder, paired by sorted file name as the
    official dataset pairs them; a concept without a mask folder is trained on whole images (the
    official style concepts).

    Args:
        image_dirs: one folder of images per concept (the official ``data/<concept>``).
        mask_dirs: one mask folder per concept (the official ``data/<concept> mask``: white = the
            object), or null for a concept trained on whole images; omitted: no masks at all.
        steps_per_concept, image_size, batch_size, seed: as in ``WorldConceptImages``.
    """

    def __init__(self, image_dirs: list[str], mask_dirs: list[str | None] | None = None, steps_per_concept: int = 50,
                 image_size: int = 512, batch_size: int = 1, seed: int = 0) -> None:  # fmt: skip
        super().__init__(steps_per_concept, batch_size, seed)
        mask_dirs = list(mask_dirs) if mask_dirs is not None else [None] * len(image_dirs)
        if not image_dirs or len(mask_dirs) != len(image_dirs):
            raise IGMUError(
                f"{len(image_dirs)} image folders but {len(mask_dirs)} mask folders: give one (or null) per concept"
            )
        self.image_dirs, self.mask_dirs, self.image_size = [Path(d) for d in image_dirs], mask_dirs, image_size

    @property
    def n_concepts(self) -> int:
        return len(self.image_dirs)

    @staticmethod
    def files(folder: Path, what: str) -> list[Path]:
        if not folder.is_dir():
            raise IGMUError(f"{what} folder '{folder}' does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise IGMUError(f"{what} folder '{folder}' holds no image")
        return files

    def load(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        pools = []
        for image_dir, mask_dir in zip(self.image_dirs, self.mask_dirs):
            images = [load_image(p, self.image_size) for p in self.files(image_dir, "concept image")]
            if mask_dir is None:
                masks = [torch.ones(1, *image.shape[1:]) for image in images]
            else:
                paths = self.files(Path(mask_dir), "mask")
                if len(paths) != len(images):
                    raise IGMUError(
                        f"mask folder '{mask_dir}' holds {len(paths)} masks for {len(images)} images in '{image_dir}'"
                    )
                masks = [load_image(p, self.image_size).mean(0, keepdim=True) for p in paths]
            pools.append(list(zip(images, masks)))
        return pools
