"""Content detectors: Lightning image classifiers with timm or CLIP backbones, and NudeNet."""

from igmu_lightning.detectors.backbones import ClipVisionFeatures, FeatureExtractor, TimmFeatures
from igmu_lightning.detectors.classifier import ImageClassifier, load_detector, save_detector

__all__ = ["ClipVisionFeatures", "FeatureExtractor", "ImageClassifier", "TimmFeatures", "load_detector", "save_detector"]
