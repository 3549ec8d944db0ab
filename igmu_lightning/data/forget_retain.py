"""Forget / retain pairs for unlearning algorithms that learn from images (SalUn, FMN, ...).

A training batch is ``{"forget": {"image": (B, 3, S, S) in [0, 1], "prompt": [str]},
"retain": {...}}``; the two halves are drawn independently, each from its own seeded shuffle that
changes every epoch (without a retain set the batch holds "forget" only). Two sources: two
captioned folders, or rendered scenes of the embedded world."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from igmu_lightning.data.captioned_folder import ImageFiles, read_metadata
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.resumable import ResumableLoader
from igmu_lightning.world.concepts import FAMILIES, MAIN_TEMPLATES, TARGETS, Scene
from igmu_lightning.world.data import sample_scene
from igmu_lightning.world.render import render_tensor


class PairSampler(Sampler):
    """``length`` index pairs (forget i, retain j): each side walks through its own reshuffled
    passes over its set, from a generator seeded by (seed, side, epoch, pass); ``skip`` leaves the
    first pairs out of the next pass (a resumed run, see ``ResumableLoader``)."""

    def __init__(self, n_forget: int, n_retain: int, length: int, seed: int = 0) -> None:
        self.sizes, self.length, self.seed, self.epoch, self.skip = (n_forget, n_retain), length, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at every epoch start
        self.epoch = epoch

    def _order(self, side: int) -> list[int]:
        n = self.sizes[side]
        if n == 0:
            return [-1] * self.length
        passes = -(-self.length // n)
        orders = [np.random.default_rng([self.seed, side, self.epoch, p]).permutation(n) for p in range(passes)]
        return np.concatenate(orders)[: self.length].tolist()

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return iter(list(zip(self._order(0), self._order(1)))[skip:])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]

    def __len__(self) -> int:
        return self.length


class PairedSets(Dataset):
    """Item (i, j) is ``{"forget": forget[i], "retain": retain[j]}`` (no retain when j < 0)."""

    def __init__(self, forget: Dataset, retain: Dataset | None) -> None:
        self.forget, self.retain = forget, retain

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, pair: tuple[int, int]) -> dict:
        i, j = pair
        item = {"forget": self.forget[i]}
        if j >= 0:
            item["retain"] = self.retain[j]
        return item


class ForgetRetainData(LightningDataModule):
    """Shared part: ``steps_per_epoch`` batches of ``batch_size`` pairs; subclasses give the sets."""

    def __init__(self, batch_size: int, steps_per_epoch: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or steps_per_epoch < 1:
            raise IGMUError(f"batch_size and steps_per_epoch must be >= 1, got {batch_size} and {steps_per_epoch}")
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.num_workers, self.seed = num_workers, seed
        self.forget_set: Dataset | None = None
        self.retain_set: Dataset | None = None

    def forget_prompts(self) -> list[str] | None:
        """The forget set's captions (for checks before the first step); None when unknown."""
        if self.forget_set is None:
            self.setup("fit")
        if hasattr(self.forget_set, "prompts"):
            return list(self.forget_set.prompts())
        items = getattr(self.forget_set, "items", None)
        return [value for _, value in items] if items and getattr(self.forget_set, "field", None) == "prompt" else None

    def train_dataloader(self) -> DataLoader:
        if self.forget_set is None:
            self.setup("fit")
        n_retain = len(self.retain_set) if self.retain_set is not None else 0
        sampler = PairSampler(len(self.forget_set), n_retain, self.batch_size * self.steps_per_epoch, self.seed)
        return ResumableLoader(
            PairedSets(self.forget_set, self.retain_set), self.batch_size, sampler=sampler,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )  # fmt: skip


class FolderForgetRetain(ForgetRetainData):
    """Forget and retain images from two captioned folders (``metadata.jsonl`` as in
    ``CaptionedFolderData``).

    Args:
        forget_root: images of the concept to erase, captioned with prompts that name it.
        retain_root: images to keep (optional: FMN needs none).
        image_size: side of the square crops (512 for SD v1.x).
        batch_size: pairs per batch (per device).
        steps_per_epoch: batches per epoch (forget and retain cycle, reshuffled each pass).
        hflip: random horizontal flips.
    """

    def __init__(
        self,
        forget_root: str,
        retain_root: str | None = None,
        image_size: int = 512,
        batch_size: int = 1,
        steps_per_epoch: int = 100,
        hflip: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, steps_per_epoch, num_workers, seed)
        self.forget_root, self.retain_root = Path(forget_root), Path(retain_root) if retain_root else None
        self.image_size, self.hflip = image_size, hflip

    def setup(self, stage: str | None = None) -> None:
        self.forget_set = ImageFiles(read_metadata(self.forget_root), self.image_size, "prompt", self.hflip)
        if self.retain_root is not None:
            self.retain_set = ImageFiles(read_metadata(self.retain_root), self.image_size, "prompt", self.hflip)


class WorldScenesOf(Dataset):
    """``n`` rendered world scenes whose ``family`` is (``keep=True``) or is never (``keep=False``)
    ``value``, captioned with the main templates; item i depends only on (seed, keep, i)."""

    def __init__(self, family: str, value: str, keep: bool, n: int, image_size: int, seed: int) -> None:
        self.family, self.value, self.keep = family, value, keep
        self.n, self.image_size, self.seed = n, image_size, seed
        self.others = [v for v in FAMILIES[family] if v != value]

    def __len__(self) -> int:
        return self.n

    def scene_caption(self, rng: np.random.Generator) -> tuple[Scene, str]:
        scene = sample_scene(rng)
        if self.keep:
            scene = replace(scene, **{self.family: self.value})
        elif scene.label(self.family) == self.value:
            scene = replace(scene, **{self.family: self.others[rng.integers(len(self.others))]})
        return scene, scene.caption(MAIN_TEMPLATES[rng.integers(len(MAIN_TEMPLATES))])

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(self.keep), index])
        scene, caption = self.scene_caption(rng)
        return {"image": render_tensor(scene, self.image_size, rng), "prompt": caption}

    def prompts(self) -> list[str]:
        """Every item's caption, without rendering its image."""
        return [self.scene_caption(np.random.default_rng([self.seed, int(self.keep), i]))[1] for i in range(self.n)]


class WorldForgetRetain(ForgetRetainData):
    """Forget / retain pairs from the embedded world: forget scenes show the target (its family
    takes the target's value: every scene a triangle, striped or hollow), retain scenes never do.

    Args:
        target: ``object`` (triangle), ``style`` (striped) or ``attribute`` (hollow).
        n_forget, n_retain: how many distinct scenes each set holds (n_retain 0: no retain set).
        image_size: pixel side (32 for the shipped model).
        batch_size, steps_per_epoch: as in ``FolderForgetRetain``.
        seed: the scenes and the shuffles depend only on it.
    """

    def __init__(
        self,
        target: Literal["object", "style", "attribute"] = "object",
        n_forget: int = 256,
        n_retain: int = 256,
        image_size: int = 32,
        batch_size: int = 8,
        steps_per_epoch: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, steps_per_epoch, num_workers, seed)
        if target not in TARGETS:
            raise IGMUError(f"unknown world target '{target}': choose one of {', '.join(TARGETS)}")
        if n_forget < 1 or n_retain < 0:
            raise IGMUError(f"n_forget must be >= 1 and n_retain >= 0, got {n_forget} and {n_retain}")
        self.target, self.n_forget, self.n_retain, self.image_size = TARGETS[target], n_forget, n_retain, image_size

    def setup(self, stage: str | None = None) -> None:
        t = self.target
        self.forget_set = WorldScenesOf(t.family, t.word, True, self.n_forget, self.image_size, self.seed)
        self.retain_set = (
            WorldScenesOf(t.family, t.word, False, self.n_retain, self.image_size, self.seed) if self.n_retain else None
        )
