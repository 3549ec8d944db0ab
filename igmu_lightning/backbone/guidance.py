"""Sampling-time guidance: a rule that replaces classifier-free guidance in every sampler of a
backbone (SLD's safety guidance, SAFREE's prompt filter; SPM's gate next). It travels with an exported model as
``igmu_guidance.json`` (its ``to_config``), which the loader turns back into the same rule."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from igmu_lightning.errors import IGMUError

GUIDANCE_FILE = "igmu_guidance.json"


class SamplingGuidance:
    """The protocol ``Sampler.guided_noise`` calls at each denoising step instead of plain CFG.

    ``noise(sampler, latents, t, step, cond, uncond)`` returns the guided noise prediction for the
    scaled ``latents`` at timestep ``t`` (``step`` counts from 0 for each new trajectory), calling
    ``sampler.unet`` as often as the rule needs; ``to_config`` is plain data (class path, init args;
    attributes whose names start with "_" are a rule's runtime state and are left out).
    ``prepare(sampler, prompts, cond, uncond)`` sees the prompts behind a batch before it is sampled
    (``Sampler.text_pair``) and returns the (cond, uncond) to sample with: a rule that reads the
    prompts' tokens (SAFREE) prepares there; by default they pass through."""

    def prepare(self, sampler, prompts: list[str], cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cond, uncond

    def noise(self, sampler, latents: torch.Tensor, t: torch.Tensor, step: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_config(self) -> dict:
        from igmu_lightning.backbone.loader import class_config  # the loader reads guidance files

        config = class_config(self)
        config["init_args"] = {k: v for k, v in config["init_args"].items() if not k.startswith("_")}
        return config

    @staticmethod
    def from_config(config: dict) -> SamplingGuidance:
        """The inverse of ``to_config``; only this project's ``SamplingGuidance`` classes."""
        from igmu_lightning.backbone.loader import from_class_config  # the loader reads guidance files

        return from_class_config(config, "guidance", SamplingGuidance)


def read_guidance(folder: Path) -> SamplingGuidance | None:
    """The guidance saved in a model folder, or None when it has none."""
    path = Path(folder) / GUIDANCE_FILE
    if not path.is_file():
        return None
    try:
        return SamplingGuidance.from_config(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise IGMUError(f"'{path}' is not a valid guidance file ({err}): delete it or export the model again") from None
