"""Adapters: new modules an algorithm attaches to a backbone (LoRA, an eraser block) instead of, or
besides, editing its weights. This is the protocol the backbone, deltas and checkpoints rely on; the
kinds themselves live in ``igmu_lightning.modules.adapters`` and are named by class path in files."""

from __future__ import annotations

from igmu_lightning.backbone.loader import class_config, from_class_config
from igmu_lightning.errors import IGMUError


class AdapterSpec:
    """What to attach and where, as plain config: ``to_config`` goes into deltas and checkpoints, and
    ``from_config`` rebuilds it (only this project's classes), so a delta attaches the same adapters.

    A kind implements ``attach`` (add modules to the backbone in place) and ``set_enabled`` (switch its
    effect off for the teacher). ``mergeable`` says whether its effect folds into plain weights."""

    mergeable = False
    component = "unet"  # the backbone component it changes: unet or text_encoder

    def attach(self, backbone) -> None:
        raise NotImplementedError

    def set_enabled(self, backbone, enabled: bool) -> None:
        raise NotImplementedError

    def detach(self, backbone) -> None:
        """Remove the adapter's modules and tensors in place (``Backbone.detach_adapters``)."""
        raise IGMUError(f"adapter {self.describe()} cannot be detached from a backbone")

    def describe(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def to_config(self) -> dict:
        return class_config(self)

    @staticmethod
    def from_config(config: AdapterSpec | dict) -> AdapterSpec:
        return from_class_config(config, "adapter", AdapterSpec)
