"""Prompt-faithfulness of a model of the embedded world: for every class of every concept family,
images of prompts that ask for it, judged by that family's detector. It is how the shipped base
model's quality is measured (docs/world.md) and the world's stand-in for alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from igmu_lightning.backbone import BackboneSpec, Pretrained
from igmu_lightning.detectors import load_detector
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import Evaluation, EvaluationOutput
from igmu_lightning.evaluation.evaluators import CI_METHODS, detector_record
from igmu_lightning.metrics import ClassRate, rate_summary
from igmu_lightning.sampling import Sampler, SamplerSettings
from igmu_lightning.world.concepts import FAMILIES
from igmu_lightning.world.prompts import family_prompts

WORLD_MODEL = "checkpoints/world/base"
WORLD_DETECTORS = "checkpoints/world/detectors"


def load_world_detectors(folder: str | Path, families: list[str], device: str | torch.device = "cpu") -> dict:
    folder = Path(folder)
    if (folder / "detector.json").is_file():
        raise IGMUError(f"detectors '{folder}' is a single detector, not the world's detectors folder: give the folder "
                        f"holding {', '.join(f + '/' for f in families)} (e.g. {WORLD_DETECTORS})")  # fmt: skip
    detectors = {}
    for family in families:
        detector = load_detector(folder / family, device)
        if detector.class_names != list(FAMILIES[family]):
            raise IGMUError(f"detector '{folder / family}' has classes {detector.class_names}, expected {list(FAMILIES[family])}: "
                            f"it was trained for another task; put the {family} detector there")  # fmt: skip
        detectors[family] = detector
    return detectors


class WorldFaithfulness(Evaluation):
    """Per class: the share of ``images_per_class`` images its detector assigns to that class.

    Args:
        backbone: the world model to judge (default: the shipped base model).
        detectors: folder with one detector per family (``shape/``, ``colour/``...).
        families: which families to judge.
        images_per_class: images per class, each with its own seed.
        sampler: sampling settings (default: the sampler's defaults).
        batch_size: images per sampler batch.
        name: method name in the results.
    """

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        detectors: str = WORLD_DETECTORS,
        families: list[str] | None = None,
        images_per_class: int = 64,
        sampler: SamplerSettings | None = None,
        batch_size: int = 64,
        name: str = "base",
    ) -> None:
        self.backbone = backbone or Pretrained(WORLD_MODEL)
        self.detectors, self.families = detectors, list(families or FAMILIES)
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise IGMUError(f"unknown families {sorted(unknown)}: choose from {', '.join(FAMILIES)}")
        if images_per_class < 1:
            raise IGMUError(f"images_per_class must be >= 1, got {images_per_class}")
        self.images_per_class, self.settings = images_per_class, sampler or SamplerSettings()
        self.batch_size, self.name = batch_size, name

    def run(self, seed: int) -> EvaluationOutput:
        model = self.backbone.build().to(self.device).eval()
        detectors = load_world_detectors(self.detectors, self.families, self.device)
        sampler = Sampler(model, self.settings, batch_size=self.batch_size)
        metrics, outcomes, groups = {}, {f: [] for f in self.families}, {f: [] for f in self.families}
        jobs = [(f, c) for f in self.families for c in FAMILIES[f]]
        offset = 0
        for family, value in tqdm(jobs, desc="faithfulness", unit="class"):
            rng = np.random.default_rng([seed, list(FAMILIES).index(family), FAMILIES[family].index(value)])
            items = family_prompts(family, value, self.images_per_class, rng)
            seeds = [seed * 1_000_003 + offset + i for i in range(len(items))]
            offset += len(items)
            images = sampler.generate([it.prompt for it in items], seeds).images
            first: dict[str, int] = {}  # a prompt drawn twice is one prompt with two seeds
            ids = torch.tensor([first.setdefault(it.prompt, seeds[i]) for i, it in enumerate(items)])
            rate = ClassRate(FAMILIES[family].index(value))
            with torch.inference_mode():
                rate.update(detectors[family].predict(images), ids)
            metrics[f"{family}.{value}"] = rate.summary(seed)
            outcomes[family].append(rate.per_sample())
            groups[family].append(ids)
        for family, parts in outcomes.items():  # classes have equal n: the pooled rate is their mean
            metrics[f"{family}.mean"] = rate_summary(torch.cat(parts), torch.cat(groups[family]), seed)
        evaluators = {
            "detectors": {f: detector_record(d, Path(self.detectors) / f) for f, d in detectors.items()},
            "ci": CI_METHODS,
        }
        return EvaluationOutput({self.name: {"aspects": {"alignment": metrics}}}, {self.name: model.hashes()}, evaluators)
