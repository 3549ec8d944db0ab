"""The embedded world: procedural captioned scenes, their prompt sets and their data module."""

from igmu_lightning.world.concepts import FAMILIES, TARGETS, Scene, Target
from igmu_lightning.world.data import WorldData, WorldScenes

__all__ = ["FAMILIES", "TARGETS", "Scene", "Target", "WorldData", "WorldScenes"]
