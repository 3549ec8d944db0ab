"""Held-out accuracy of content detectors on DataIGM-layout test folders (``<root>/<task>/test/``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from igmu_lightning.data.labelled_folder import LabelledImages, list_labelled_images
from igmu_lightning.detectors import load_detector
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import Evaluation, EvaluationOutput
from igmu_lightning.evaluation.evaluators import CI_METHODS, detector_record
from igmu_lightning.metrics import LabelAccuracy
from igmu_lightning.utils.hashing import module_hash


class DetectorAccuracy(Evaluation):
    """Accuracy (with its Wilson CI: test images are independent) of each detector on its task's
    ``test/`` split.

    Args:
        detectors: name -> detector folder (``model.safetensors`` + ``detector.json``).
        tasks: name -> task folder name under ``root`` (e.g. ``World_Shape``).
        root: the DataIGM-layout folder.
        image_size: images are resized to this before the detector sees them (None: as stored).
    """

    def __init__(
        self,
        detectors: dict[str, str],
        tasks: dict[str, str],
        root: str = "data/world",
        image_size: int | None = None,
        batch_size: int = 256,
    ) -> None:
        if set(detectors) != set(tasks):
            raise IGMUError(f"detectors {sorted(detectors)} and tasks {sorted(tasks)} must name the same detectors")
        self.detectors, self.tasks, self.root = detectors, tasks, Path(root)
        self.image_size, self.batch_size = image_size, batch_size

    def run(self, seed: int) -> EvaluationOutput:
        methods, hashes, judges = {}, {}, {}
        for name in sorted(self.detectors):
            detector = load_detector(self.detectors[name])
            items = list_labelled_images(self.root / self.tasks[name] / "test", detector.class_names)
            loader = DataLoader(LabelledImages(items, self.image_size), self.batch_size)
            accuracy = LabelAccuracy()
            with torch.inference_mode():
                for batch in loader:
                    accuracy.update(detector.predict(batch["image"]), batch["label"])
            methods[name] = {"aspects": {"quality": {"detector.accuracy": accuracy.summary(seed)}}}
            hashes[name] = {"detector": module_hash(detector)}
            judges[name] = detector_record(detector, self.detectors[name])
        return EvaluationOutput(methods, hashes, {"detectors": judges, "ci": CI_METHODS})
