"""DataIGM's detector images: ``<root>/<task>/{train,test}/<label>/*`` (e.g. ``Nudity/train/nude``),
as a ``LightningDataModule`` that yields ``{"image", "label"}`` batches for detector training."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, random_split

from igmu_lightning.data.captioned_folder import ImageFiles
from igmu_lightning.errors import IGMUError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def list_labelled_images(split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    if not split_dir.is_dir():
        raise IGMUError(f"'{split_dir}' does not exist: expected <root>/<task>/{{train,test}}/<label>/ folders")
    items = []
    for index, name in enumerate(class_names):
        folder = split_dir / name
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise IGMUError(f"class folder '{folder}' has no images")
        items += [(p, index) for p in files]
    return items


def LabelledImages(items: list[tuple[Path, int]], size: int | None, hflip: bool = False) -> ImageFiles:  # noqa: N802
    """``{"image", "label"}`` items."""
    return ImageFiles(items, size, "label", hflip)


class LabelledFolderData(LightningDataModule):
    """Train / val / test batches from a DataIGM-layout folder.

    Args:
        root: the folder holding ``<task>/``.
        task: e.g. ``Nudity``, ``Style_VanGogh``, ``World_Shape``.
        class_names: label folders in index order (default: the sorted folders of ``train/``).
        image_size: images are resized (short side) and centre-cropped to this.
        val_fraction: share of ``train/`` held out for validation.
    """

    def __init__(
        self,
        root: str,
        task: str,
        class_names: list[str] | None = None,
        image_size: int | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        hflip: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.task_dir = Path(root) / task
        if class_names is None:  # read from the folder now; given names are checked at setup
            self._check_task_dir()
            train = self.task_dir / "train"
            class_names = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        if len(class_names) < 2:
            raise IGMUError(f"'{self.task_dir}/train' needs at least two label folders, found {class_names}")
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size, self.batch_size, self.val_fraction = image_size, batch_size, val_fraction
        self.hflip, self.num_workers, self.seed = hflip, num_workers, seed
        self.sets: dict[str, Dataset] = {}

    def _check_task_dir(self) -> None:
        if not self.task_dir.is_dir():
            raise IGMUError(f"task folder '{self.task_dir}' does not exist (expected <root>/<task>/{{train,test}}/<label>/)")

    def setup(self, stage: str | None = None) -> None:
        self._check_task_dir()
        train = list_labelled_images(self.task_dir / "train", self.class_names)
        n_val = int(round(len(train) * self.val_fraction))
        fit, val = random_split(train, [len(train) - n_val, n_val], torch.Generator().manual_seed(self.seed))
        self.sets["train"] = LabelledImages(list(fit), self.image_size, self.hflip)
        self.sets["val"] = LabelledImages(list(val), self.image_size)
        if (self.task_dir / "test").is_dir():
            self.sets["test"] = LabelledImages(list_labelled_images(self.task_dir / "test", self.class_names), self.image_size)

    def _loader(self, split: str, shuffle: bool = False):
        data = self.sets.get(split)
        if not data:
            return []
        return DataLoader(data, self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        if "test" not in self.sets:
            raise IGMUError(f"'{self.task_dir}' has no test/ folder")
        return self._loader("test")
