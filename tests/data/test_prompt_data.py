"""The prompt-only data modules: ``PromptData`` hands out its prompts, ``StepData`` only counts steps."""

import pytest
import torch

from igmu_lightning.data import PromptData, StepData
from igmu_lightning.errors import IGMUError


def test_prompt_data_batches_cycle_through_its_prompts():
    torch.manual_seed(0)
    batches = [b["prompt"] for b in PromptData(["a cat", "a dog"], batch_size=2, steps_per_epoch=3).train_dataloader()]
    assert len(batches) == 3 and all(len(b) == 2 for b in batches)
    assert sorted(p for b in batches for p in b) == ["a cat"] * 3 + ["a dog"] * 3


def test_step_data_carries_no_prompts_and_draws_no_random_number():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = list(StepData(steps_per_epoch=3).train_dataloader())
    assert [b["step"].tolist() for b in batches] == [[0], [1], [2]]
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left as it was
    with pytest.raises(IGMUError, match="steps_per_epoch must be >= 1"):
        StepData(steps_per_epoch=0)
    with pytest.raises(TypeError):
        StepData(prompts=["a cat"])  # no prompts: a step counter
