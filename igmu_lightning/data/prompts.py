"""Prompt-only training data, for algorithms whose batches are prompts (ESD's concept), a plain step
counter for those whose training reads no batch (UCE's closed-form edit, SLD), and readers of HUB's
prompt files (target, multilingual and adversarial prompts) for generate-and-score."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.resumable import ResumableLoader, ShuffleSampler
from igmu_lightning.utils.text import read_prompt_lines, read_text_file

__all__ = ["PromptData", "StepData", "read_multilingual_csv", "read_prompt_lines"]


class PromptCycle(Dataset):
    """``length`` items cycling through ``prompts``: ``{"prompt": str}``."""

    def __init__(self, prompts: list[str], length: int) -> None:
        self.prompts, self.length = prompts, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"prompt": self.prompts[index % len(self.prompts)]}


class PromptData(LightningDataModule):
    """Batches ``{"prompt": [str]}`` of ``batch_size`` prompts, cycling through ``prompts`` in a
    shuffled order (one draw from the global torch RNG per epoch, as ``RandomSampler``).

    Args:
    prompts: the prompts to cycle through (ESD: the concept, or several concepts).
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


class Steps(Dataset):
    """Item i is ``{"step": i}``."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"step": index}


class StepData(LightningDataModule):
    """Batches that carry no data, ``{"step": tensor([i])}``, for modules whose training step reads
    no batch (UCE applies its closed-form edit once, SLD trains nothing): the loop runs
    ``steps_per_epoch`` steps in order, and it draws nothing from the global random stream.

    Args:
    steps_per_epoch: batches in one epoch (1: the one step of a closed-form or training-free method).
    """

    def __init__(self, steps_per_epoch: int = 1) -> None:
        super().__init__()
        if steps_per_epoch < 1:
            raise IGMUError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        # Its own generator for the loader's per-epoch base seed: the global stream stays untouched.
        return DataLoader(Steps(self.steps_per_epoch), batch_size=1, generator=torch.Generator())


# --- HUB's prompt files ----------------------------------------------------------------------
# HUB (Moon et al., "Holistic Unlearning Benchmark") ships its prompts as plain files:
#   target prompts: a headerless CSV, one prompt a line;
#   multilingual prompts: a CSV with header Original,Spanish,French,German,Italian,Portuguese,Index;
#   adversarial prompts: one prompt a line (1,000 a concept).
MULTILINGUAL_COLUMNS = ("Original", "Spanish", "French", "German", "Italian", "Portuguese", "Index")


def read_multilingual_csv(path: str | Path) -> dict[str, list[str]]:
    """HUB's multilingual prompts: ``{language: [prompt, ...]}`` for Original, Spanish, French,
    German, Italian and Portuguese (lower-cased), row for row; ``Index`` must be an integer."""
    what = "multilingual prompt file"
    path, text = read_text_file(path, what)
    rows = list(csv.reader(text.splitlines()))
    rows = [(n, row) for n, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    header = [cell.strip() for cell in rows[0][1]]
    if tuple(header) != MULTILINGUAL_COLUMNS:
        raise IGMUError(
            f"{what} '{path}' has header {','.join(header)}; HUB's multilingual CSV has {','.join(MULTILINGUAL_COLUMNS)}"
        )
    if len(rows) == 1:
        raise IGMUError(f"{what} '{path}' has a header but no prompts")
    languages = {column.lower(): [] for column in MULTILINGUAL_COLUMNS[:-1]}
    for number, row in rows[1:]:
        if len(row) != len(MULTILINGUAL_COLUMNS):
            raise IGMUError(
                f"{what} '{path}' line {number} has {len(row)} fields, not {len(MULTILINGUAL_COLUMNS)}: quote prompts that hold commas"
            )
        if not row[-1].strip().lstrip("-").isdigit():
            raise IGMUError(f"{what} '{path}' line {number}: Index '{row[-1]}' is not an integer")
        for column, cell in zip(MULTILINGUAL_COLUMNS[:-1], row):
            if not cell.strip():
                raise IGMUError(f"{what} '{path}' line {number} has no {column} prompt")
            languages[column.lower()].append(cell.strip())
    return languages
