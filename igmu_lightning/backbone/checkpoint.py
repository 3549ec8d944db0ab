"""A backbone from a training run's Lightning checkpoint: the base model named in the checkpoint,
checked against the base hashes the run recorded, with the trained tensors put back in."""

from __future__ import annotations

from pathlib import Path

import torch

from igmu_lightning.backbone.backbone import COMPONENTS, Backbone
from igmu_lightning.backbone.delta import apply_tensors
from igmu_lightning.backbone.loader import BackboneSpec
from igmu_lightning.errors import IGMUError


class FromCheckpoint(BackboneSpec):
    """Args:
    path: a ``.ckpt`` written by one of the project's modules (it holds only trained tensors).
    base: the base model, when it moved since training (default: the one the checkpoint names).
    """

    def __init__(self, path: str, base: BackboneSpec | None = None) -> None:
        self.path, self.base = path, base

    def describe(self) -> str:
        return self.path

    def check(self) -> None:
        """The checkpoint reads and its base model builds with the hashes the run recorded."""
        self.build()

    def build(self) -> Backbone:
        path = Path(self.path)
        if not path.is_file():
            raise IGMUError(f"checkpoint '{path}' does not exist")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
            raise IGMUError(f"checkpoint '{path}' cannot be read safely ({type(err).__name__}): is it a Lightning .ckpt?") from None
        record = checkpoint.get("igmu")
        spec = checkpoint.get("hyper_parameters", {}).get("backbone")
        if record is None or (spec is None and self.base is None):
            raise IGMUError(f"checkpoint '{path}' was not written by an igmu-lightning module")
        backbone = (self.base or BackboneSpec.from_config(spec)).build()
        state = {k.removeprefix("backbone."): v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
        # All three components are checked: the run's hashes cover the whole base it started from.
        # An adapter method's record names its adapters, attached after the check.
        apply_tensors(backbone, state, record["base_hashes"], str(path), check=COMPONENTS, adapters=record.get("adapters", ()))
        backbone.source = str(path)
        return backbone
