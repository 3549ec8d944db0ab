"""The world evaluation's prompt sets: each set flattened with fixed seeds and prompt ids (the
clusters of the intervals), and how many prompts each set gets, from a count or a precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.distributed import is_main
from igmu_lightning.metrics import prompts_for_half_width
from igmu_lightning.world.concepts import FAMILIES
from igmu_lightning.world.prompts import PROMPT_SETS, PromptItem, per_class_for_set_size, prompt_sets


@dataclass
class PromptBatch:
    """One prompt set flattened: prompts, the scenes they ask for, their seeds, and each item's
    prompt id (the position of its prompt's first occurrence in the whole set: items with the same
    prompt text are seeds of one prompt, a cluster for the intervals)."""

    items: list[PromptItem]
    seeds: list[int]
    start: int = 0  # position of the first item in the whole set (a process holds a part)
    groups: list[int] | None = None

    def __post_init__(self) -> None:
        if self.groups is None:
            first: dict[str, int] = {}
            self.groups = [first.setdefault(it.prompt, self.start + i) for i, it in enumerate(self.items)]

    @property
    def prompts(self) -> list[str]:
        return [it.prompt for it in self.items]

    def labels(self, family: str) -> torch.Tensor:
        return torch.tensor([FAMILIES[family].index(it.scene.label(family)) for it in self.items])

    def part(self, where: slice) -> PromptBatch:
        return PromptBatch(self.items[where], self.seeds[where], self.start + where.start, self.groups[where])

    def positions(self, offset: int = 0) -> torch.Tensor:
        return torch.arange(len(self.items)) + self.start + offset

    def prompt_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(self.groups, dtype=torch.long, device=device)


def flatten_sets(target: str, n_per_class: int | dict[str, int], seed: int) -> dict[str, PromptBatch]:
    """Each set's prompts in a fixed order with fixed seeds: every model sees the same (prompt,
    seed) pairs, and remove_word item k shares its seed with forget item k (a matched pair).
    ``n_per_class``: one count, or one per set (``world.prompts.per_class_for_set_size``)."""
    batches = {}
    for name, classes in prompt_sets(target, n_per_class, seed).items():
        items = [it for cls in classes.values() for it in cls]
        set_id = "forget" if name == "remove_word" else name  # same seeds as the prompts they strip
        base = seed * 1_000_003 + PROMPT_SETS.index(set_id) * 100_000
        batches[name] = PromptBatch(items, [base + i for i in range(len(items))])
    return batches


def set_sizes(target: str, prompts_per_set: int, max_half_width: float | None, prompts_per_class: int | None) -> dict[str, int]:
    """Prompts per class of each set, from a fixed count per class, a target precision, or a set
    size (in that order of precedence); prints the n a target precision implies."""
    if max_half_width is not None:
        if prompts_per_class is not None:
            raise IGMUError("give max_half_width or prompts_per_class, not both")
        try:
            prompts_per_set = prompts_for_half_width(max_half_width)
        except ValueError as err:
            raise IGMUError(str(err)) from None
        if is_main():
            print(f"max_half_width {max_half_width} -> {prompts_per_set} prompts per set (Wilson, worst case p = 0.5)")
    if prompts_per_class is not None:
        if prompts_per_class < 2:
            raise IGMUError(f"prompts_per_class must be >= 2 (FID needs two images), got {prompts_per_class}")
        return dict.fromkeys(PROMPT_SETS, prompts_per_class)
    if prompts_per_set < 2:
        raise IGMUError(f"prompts_per_set must be >= 2 (FID needs two images), got {prompts_per_set}")
    return per_class_for_set_size(target, prompts_per_set)
