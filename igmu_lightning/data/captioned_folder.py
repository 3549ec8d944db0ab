"""Captioned images from a folder: ``metadata.jsonl`` lines ``{"file_name": ..., "text": ...}``
(the layout of Hugging Face's ``imagefolder``), for fine-tuning text-to-image models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, random_split

from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.resumable import ResumableLoader, ShuffleSampler


def load_image(path: Path, size: int | None = None) -> torch.Tensor:
    """An RGB image as a (3, H, W) float tensor in [0, 1], resized (short side) and centre-cropped
    to ``size``. A missing or corrupt file raises a one-line error naming it."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                scale = size / min(im.size)
                im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
                left, top = (im.width - size) // 2, (im.height - size) // 2
                im = im.crop((left, top, left + size, top + size))
            array = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise IGMUError(f"image '{path}' does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise IGMUError(f"image '{path}' cannot be read ({type(err).__name__}): remove or replace it") from None
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def read_metadata(root: Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from ``root/metadata.jsonl``, every line checked."""
    if not root.is_dir():
        raise IGMUError(f"image folder '{root}' does not exist")
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise IGMUError(f"'{root}' has no metadata.jsonl: add one line {{\"file_name\": ..., \"text\": ...}} per image")
    items = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append((root / row["file_name"], str(row["text"])))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise IGMUError(f"{meta}:{number} is not a JSON object with 'file_name' and 'text'") from None
    if not items:
        raise IGMUError(f"{meta} lists no images")
    missing = [str(p) for p, _ in items if not p.is_file()]
    if missing:
        raise IGMUError(f"{meta} names {len(missing)} missing image(s), first '{missing[0]}'")
    return items


class ImageFiles(Dataset):
    """``{"image": (3, S, S) in [0, 1], field: value}`` for a list of (path, value) pairs."""

    def __init__(self, items: list[tuple[Path, Any]], size: int | None, field: str, hflip: bool = False) -> None:
        self.items, self.size, self.field, self.hflip = items, size, field, hflip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, value = self.items[index]
        image = load_image(path, self.size)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, self.field: value}


class CaptionedFolderData(LightningDataModule):
    """Batches ``{"image": (B, 3, S, S) in [0, 1], "prompt": [str]}`` from a captioned folder.

    Args:
        root: folder with the images and ``metadata.jsonl``.
        image_size: side of the square crops (the model's pixel resolution).
        batch_size: images per batch (per device).
        val_fraction: share held out for validation (split by ``seed``).
        hflip: random horizontal flips for training.
        num_workers: data-loading worker processes.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 512,
        batch_size: int = 1,
        val_fraction: float = 0.0,
        hflip: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise IGMUError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.image_size, self.batch_size = Path(root), image_size, batch_size
        self.val_fraction, self.hflip, self.num_workers, self.seed = val_fraction, hflip, num_workers, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        items = read_metadata(self.root)
        n_val = int(round(len(items) * self.val_fraction))
        train, val = random_split(items, [len(items) - n_val, n_val], torch.Generator().manual_seed(self.seed))
        self.train_set = ImageFiles(list(train), self.image_size, "prompt", self.hflip)
        self.val_set = ImageFiles(list(val), self.image_size, "prompt") if n_val else None

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(
            self.train_set, self.batch_size, sampler=ShuffleSampler(len(self.train_set)), num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers)
