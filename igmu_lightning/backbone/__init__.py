"""The shared diffusion backbone: loading (hub id or diffusers folder), tiny test models, tokenizer."""

from igmu_lightning.backbone.backbone import Backbone
from igmu_lightning.backbone.checkpoint import FromCheckpoint
from igmu_lightning.backbone.delta import WithDelta
from igmu_lightning.backbone.guidance import SamplingGuidance
from igmu_lightning.backbone.loader import SD14, BackboneSpec, Pretrained, load_backbone
from igmu_lightning.backbone.tiny import TinySD

__all__ = ["SD14", "Backbone", "BackboneSpec", "FromCheckpoint", "Pretrained", "SamplingGuidance", "TinySD", "WithDelta", "load_backbone"]
