"""What lives on disk, below evaluation and algorithms: images and their cache, the run record of a
trained model, and the names of the files an exported model carries (the delta and the guidance are
read and written in backbone/)."""

from igmu_lightning.artifacts.images import ImageCache, fingerprint, model_fingerprint, save_png
from igmu_lightning.artifacts.run_record import RUN_RECORD, read_run_record

__all__ = ["RUN_RECORD", "ImageCache", "fingerprint", "model_fingerprint", "read_run_record", "save_png"]
