"""What lives on disk, below evaluation and algorithms: images and their cache, and the names of the
files an exported model carries (the delta and the guidance are read and written in backbone/)."""

from igmu_lightning.artifacts.images import ImageCache, fingerprint, model_fingerprint, save_png

RUN_RECORD = "igmu_run.json"  # written beside an exported model: how long and how much memory it took

__all__ = ["RUN_RECORD", "ImageCache", "fingerprint", "model_fingerprint", "save_png"]
