"""LightningModules: the shared backbone base, plain text-to-image training."""

from igmu_lightning.modules.autoencoder import AutoencoderTraining
from igmu_lightning.modules.base import BackboneModule
from igmu_lightning.modules.text_to_image import TextToImage

__all__ = ["AutoencoderTraining", "BackboneModule", "TextToImage"]
