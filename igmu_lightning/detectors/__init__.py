"""Content detectors: Lightning image classifiers on timm or CLIP image encoders, and NudeNet."""

from igmu_lightning.detectors.classifier import ImageClassifier, load_detector, save_detector
from igmu_lightning.detectors.encoders import ClipVisionFeatures, FeatureExtractor, TimmFeatures

__all__ = ["ClipVisionFeatures", "FeatureExtractor", "ImageClassifier", "TimmFeatures", "load_detector", "save_detector"]
