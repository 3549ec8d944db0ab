"""LightningDataModules: captioned image folders (and, later, DataIGM splits and the world)."""

from igmu_lightning.data.captioned_folder import CaptionedFolderData, load_image

__all__ = ["CaptionedFolderData", "load_image"]
