"""The world as data: procedural captioned scenes, deterministic from (seed, split, index), as a
``LightningDataModule`` for pretraining the base model and training the detectors."""

from __future__ import annotations

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.resumable import ResumableLoader, ShuffleSampler
from igmu_lightning.world.concepts import (
    ATTRIBUTES,
    COLOURS,
    FAMILIES,
    MAIN_TEMPLATES,
    PARAPHRASE_TEMPLATES,
    SHAPES,
    SHORT_TEMPLATES,
    STYLES,
    SYNONYMS,
    Scene,
)
from igmu_lightning.world.render import render_tensor

SPLITS = {"train": 0, "val": 1, "test": 2}
ATTRIBUTE_PROBS = (0.5, 0.25, 0.25)  # filled, hollow, outlined
TEMPLATE_PROBS = (0.7, 0.15, 0.15)  # main, short, paraphrase


def split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


def sample_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=COLOURS[rng.integers(len(COLOURS))],
        style=STYLES[rng.integers(len(STYLES))],
        attribute=ATTRIBUTES[rng.choice(len(ATTRIBUTES), p=ATTRIBUTE_PROBS)],
    )


def sample_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Main templates name every concept by its main name; paraphrase templates use a synonym for
    a concept that has one half of the time; short templates leave factors out."""
    kind = rng.choice(3, p=TEMPLATE_PROBS)
    if kind == 0:
        return scene.caption(MAIN_TEMPLATES[rng.integers(len(MAIN_TEMPLATES))])
    if kind == 1:
        return scene.caption(SHORT_TEMPLATES[rng.integers(len(SHORT_TEMPLATES))])
    words = {w: syn[rng.integers(len(syn))] for w, syn in SYNONYMS.items() if rng.random() < 0.5}
    return scene.caption(PARAPHRASE_TEMPLATES[rng.integers(len(PARAPHRASE_TEMPLATES))], words)


class WorldScenes(Dataset):
    """``size`` scenes of one split; item i is the same on every machine and in every worker.

    Items: ``{"image": (3, S, S) float in [0, 1], "prompt": str, "<family>": class index}`` for
    each family, and ``"label"`` = the index in ``family`` when one is chosen (detector training).
    """

    def __init__(self, size: int, split: str = "train", seed: int = 0, image_size: int = 32, family: str | None = None):
        if split not in SPLITS:
            raise IGMUError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
        if family is not None and family not in FAMILIES:
            raise IGMUError(f"unknown concept family '{family}': choose one of {', '.join(FAMILIES)}")
        self.size, self.split, self.seed, self.image_size, self.family = size, split, seed, image_size, family

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> tuple[Scene, str, np.random.Generator]:
        rng = split_rng(self.seed, self.split, index)
        scene = sample_scene(rng)
        return scene, sample_caption(scene, rng), rng

    def __getitem__(self, index: int) -> dict:
        scene, caption, rng = self.scene(index)
        item = {"image": render_tensor(scene, self.image_size, rng), "prompt": caption}
        for family, classes in FAMILIES.items():
            item[family] = classes.index(scene.label(family))
        if self.family is not None:
            item["label"] = item[self.family]
        return item


class WorldData(LightningDataModule):
    """Train / val / test splits of the world.

    Args:
        train_size, val_size, test_size: scenes per split (they are drawn, not stored).
        image_size: pixel side (32 for the shipped model).
        batch_size: per device.
        family: when set (shape / colour / style / attribute), batches carry ``label`` for a detector.
        seed: the world's seed; a split's scenes depend only on it and the index.
    """

    def __init__(
        self,
        train_size: int = 50_000,
        val_size: int = 512,
        test_size: int = 2_000,
        image_size: int = 32,
        batch_size: int = 64,
        family: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if min(train_size, val_size, test_size) < 0 or train_size == 0:
            raise IGMUError("world split sizes must be >= 0 and train_size > 0")
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.image_size, self.batch_size, self.family = image_size, batch_size, family
        self.num_workers, self.seed = num_workers, seed
        self.num_classes = len(FAMILIES[family]) if family else 0
        self.class_names = list(FAMILIES[family]) if family else []

    def dataset(self, split: str) -> WorldScenes:
        return WorldScenes(self.sizes[split], split, self.seed, self.image_size, self.family)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader | list:
        if not self.sizes[split]:
            return []
        data, loader = self.dataset(split), (ResumableLoader if shuffle else DataLoader)
        sampler = ShuffleSampler(len(data)) if shuffle else None  # training: resumable mid-epoch
        return loader(
            data, self.batch_size, sampler=sampler, num_workers=self.num_workers, persistent_workers=self.num_workers > 0
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
