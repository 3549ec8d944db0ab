"""Sampling-time guidance: a rule that replaces classifier-free guidance in every sampler of a
backbone (SLD's safety guidance, SAFREE's prompt filter; SPM's gate next). It travels with an exported model as
``igmu_guidance.json`` (its ``to_config``), which the loader turns back into the same rule."""

from __future__ import annotations

import hashlib
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
    prompts' tokens (SAFREE) prepares there; by default they pass through. A rule that carries
    tensors (SPM's adapter) writes them beside the JSON in ``save_files`` and reads them back in
    ``load_files``; its ``to_config`` names them by hash, so the model's fingerprint (the image
    cache's key) changes with them."""

    # False for a rule that needs the prompts behind every batch (SAFREE's token projection): such a
    # model cannot be sampled from embeddings alone (an embedding attack's read-out)
    samples_embeddings: bool = True

    def prepare(self, sampler, prompts: list[str], cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cond, uncond

    def bind(self, backbone) -> None:
        """Called by the loader once the model saved with this rule is built: a rule that is part of
        the network itself (Receler's erasers) installs itself here, so that every call of the
        model's UNet (an attack's, a fine-tuning's) sees it, not only the sampler's. Default: nothing."""

    def noise(self, sampler, latents: torch.Tensor, t: torch.Tensor, step: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save_files(self, folder: Path) -> None:
        """Write the files the rule needs beside ``igmu_guidance.json`` (default: none)."""

    def load_files(self, folder: Path) -> None:
        """Read back what ``save_files`` wrote (default: nothing to read)."""

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


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].float().numpy().tobytes())
    return digest.hexdigest()


class GuidanceTensors:
    """Tensors a ``SamplingGuidance`` carries beside its JSON in ``TENSORS_FILE`` (safetensors), named
    in its config by their hash (the rule's ``sha256`` field): SPM's gate, Receler's erasers.
    ``KIND`` says what they are in error messages."""

    TENSORS_FILE: str = ""
    KIND: str = "its tensors"
    sha256: str = ""
    _tensors: dict[str, torch.Tensor] | None = None

    def with_tensors(self, tensors: dict[str, torch.Tensor]):
        self._tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        self.sha256 = tensors_sha256(self._tensors)
        return self

    def save_files(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors, str(Path(folder) / self.TENSORS_FILE))

    def load_files(self, folder: Path) -> None:
        from safetensors.torch import load_file

        path = Path(folder) / self.TENSORS_FILE
        if not path.is_file():
            raise IGMUError(f"'{path}' is missing: it holds {self.KIND}; export the model again")
        tensors = load_file(str(path))
        if tensors_sha256(tensors) != self.sha256:
            raise IGMUError(f"'{path}' does not match its igmu_guidance.json (sha256): export the model again")
        self._tensors = tensors

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            raise IGMUError(f"no tensors for {self.KIND} here: load it from an exported folder")
        return self._tensors


def read_guidance(folder: Path) -> SamplingGuidance | None:
    """The guidance saved in a model folder, or None when it has none."""
    path = Path(folder) / GUIDANCE_FILE
    if not path.is_file():
        return None
    try:
        guidance = SamplingGuidance.from_config(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise IGMUError(f"'{path}' is not a valid guidance file ({err}): delete it or export the model again") from None
    guidance.load_files(Path(folder))
    return guidance
