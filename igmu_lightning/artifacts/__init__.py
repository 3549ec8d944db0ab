"""What lives on disk, below evaluation and algorithms: images and their cache, the run record of a
trained model, and the names of the files an exported model carries (the delta and the guidance are
read and written in backbone/)."""

from igmu_lightning.artifacts.images import (
    ImageCache,
    find_images,
    fingerprint,
    image_grid,
    model_fingerprint,
    model_identity,
    read_manifest,
    save_png,
    write_grids,
)
from igmu_lightning.artifacts.run_record import RUN_RECORD, read_run_record

__all__ = ["RUN_RECORD", "ImageCache", "find_images", "fingerprint", "image_grid", "model_fingerprint", "model_identity",
           "read_manifest", "read_run_record", "save_png", "write_grids"]  # fmt: skip
