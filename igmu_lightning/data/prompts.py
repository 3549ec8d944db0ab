"""Prompt-only training data, for algorithms that need no images (ESD, UCE, SLD...)."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from igmu_lightning.utils.resumable import ResumableLoader, ShuffleSampler
from igmu_lightning.errors import IGMUError


class PromptCycle(Dataset):
    """``length`` items cycling through ``prompts``: ``{"prompt": str}``."""

    def __init__(self, prompts: list[str], length: int) -> None:
        self.prompts, self.length = prompts, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"prompt": self.prompts[index % len(self.prompts)]}


class PromptData(LightningDataModule):
    """Args:
    prompts: the prompts to cycle through (e.g. the concept, or the forget prompts).
    batch_size: prompts per step (per device).
    steps_per_epoch: batches in one epoch.
    """

    def __init__(self, prompts: list[str], batch_size: int = 1, steps_per_epoch: int = 1000) -> None:
        super().__init__()
        prompts = [p for p in prompts if p is not None]
        if not prompts:
            raise IGMUError("the prompt list is empty: give at least one prompt")
        if batch_size < 1 or steps_per_epoch < 1:
            raise IGMUError("batch_size and steps_per_epoch must be >= 1")
        self.prompts, self.batch_size, self.steps_per_epoch = list(prompts), batch_size, steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        data = PromptCycle(self.prompts, self.batch_size * self.steps_per_epoch)
        return ResumableLoader(data, self.batch_size, sampler=ShuffleSampler(len(data)))
