"""LightningDataModules: captioned image folders, DataIGM labelled image folders, forget/retain pairs,
prompts, and a plain step counter."""

from igmu_lightning.data.captioned_folder import CaptionedFolderData, load_image
from igmu_lightning.data.concept_images import FolderConceptImages, WorldConceptImages
from igmu_lightning.data.forget_retain import FolderForgetRetain, WorldForgetRetain
from igmu_lightning.data.labelled_folder import LabelledFolderData
from igmu_lightning.data.prompts import PromptData, StepData

__all__ = [
    "CaptionedFolderData", "FolderConceptImages", "FolderForgetRetain", "LabelledFolderData", "PromptData", "StepData", "WorldConceptImages", "WorldForgetRetain",
    "load_image",
]
