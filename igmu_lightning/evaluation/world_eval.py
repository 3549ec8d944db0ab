"""EvalIGMU on the embedded world: every aspect of one erasure target, for the original model and
each unlearned model, with the world's detectors as judges and real renders as the FID reference."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from igmu_lightning.backbone import Backbone, BackboneSpec, Pretrained
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import Evaluation, EvaluationOutput
from igmu_lightning.evaluation.distributed import gather, is_main, share
from igmu_lightning.evaluation.results import by_aspect, exact
from igmu_lightning.evaluation.generation import ImageCache, generate_images, model_fingerprint
from igmu_lightning.evaluation.tasks import task_rule
from igmu_lightning.evaluation.world import WORLD_DETECTORS, WORLD_MODEL, load_world_detectors
from igmu_lightning.metrics import ClassRate, LabelAccuracy, SampleRate
from igmu_lightning.metrics.fid import FID
from igmu_lightning.metrics.paired import FeatureDistance, TimmFeatureMaps
from igmu_lightning.modules.base import RUN_RECORD
from igmu_lightning.sampling import Sampler, SamplerSettings
from igmu_lightning.world.concepts import FAMILIES, TARGETS
from igmu_lightning.world.prompts import PROMPT_SETS, PromptItem, prompt_sets
from igmu_lightning.world.render import render_tensor

ORIGINAL = "original"


@dataclass
class PromptBatch:
    """One prompt set flattened: prompts, the scenes they ask for, their seeds."""

    items: list[PromptItem]
    seeds: list[int]
    start: int = 0  # position of the first item in the whole set (a process holds a part)

    @property
    def prompts(self) -> list[str]:
        return [it.prompt for it in self.items]

    def labels(self, family: str) -> torch.Tensor:
        return torch.tensor([FAMILIES[family].index(it.scene.label(family)) for it in self.items])

    def part(self, where: slice) -> PromptBatch:
        return PromptBatch(self.items[where], self.seeds[where], self.start + where.start)

    def positions(self, offset: int = 0) -> torch.Tensor:
        return torch.arange(len(self.items)) + self.start + offset


def flatten_sets(target: str, n_per_class: int, seed: int) -> dict[str, PromptBatch]:
    """Each set's prompts in a fixed order with fixed seeds: every model sees the same (prompt,
    seed) pairs, and remove_word item k shares its seed with forget item k (a matched pair)."""
    batches = {}
    for name, classes in prompt_sets(target, n_per_class, seed).items():
        items = [it for cls in classes.values() for it in cls]
        set_id = "forget" if name == "remove_word" else name  # same seeds as the prompts they strip
        base = seed * 1_000_003 + PROMPT_SETS.index(set_id) * 100_000
        batches[name] = PromptBatch(items, [base + i for i in range(len(items))])
    return batches


def changed_parameters(model: Backbone, original: Backbone) -> tuple[int, float]:
    """(count, share) of weight elements that differ from the original model's."""
    theirs = original.state_dict()
    changed = total = 0
    for name, tensor in model.state_dict().items():
        total += tensor.numel()
        if name not in theirs or theirs[name].shape != tensor.shape:
            changed += tensor.numel()
        else:
            changed += int((tensor != theirs[name].to(tensor.device, tensor.dtype)).sum())
    return changed, changed / max(total, 1)


class WorldEvaluation(Evaluation):
    """All EvalIGMU aspects of one world target (object / style / attribute).

    Args:
        target: which erasure task of the world.
        methods: name -> unlearned model; the original model is always scored too, as "original".
        original: the model before unlearning (default: the shipped base model).
        detectors: folder of the world's detectors, one per family.
        prompts_per_class: prompts per class of every prompt set.
        sampler: sampling settings, the same for every model.
        batch_size: images per sampler batch.
        cache_dir: image cache (None: no cache).
    """

    shares_work = True

    def __init__(
        self,
        target: str = "object",
        methods: dict[str, BackboneSpec] | None = None,
        original: BackboneSpec | None = None,
        detectors: str = WORLD_DETECTORS,
        prompts_per_class: int = 16,
        sampler: SamplerSettings | None = None,
        batch_size: int = 64,
        cache_dir: str | None = "outputs/cache/images",
    ) -> None:
        if target not in TARGETS:
            raise IGMUError(f"unknown world target '{target}': choose one of {', '.join(TARGETS)}")
        if methods and ORIGINAL in methods:
            raise IGMUError(f"'{ORIGINAL}' is the name of the original model: rename that method")
        if prompts_per_class < 2:
            raise IGMUError(f"prompts_per_class must be >= 2 (FID needs two images), got {prompts_per_class}")
        self.target, self.rule = TARGETS[target], task_rule(TARGETS[target].category)
        self.methods = dict(methods or {})
        self.original = original or Pretrained(WORLD_MODEL)
        self.detectors_dir, self.prompts_per_class = detectors, prompts_per_class
        self.settings, self.batch_size = sampler or SamplerSettings(), batch_size
        self.cache = ImageCache(cache_dir) if cache_dir else None
        self.keep_samples = 8  # forget-prompt images kept per model for image grids

    # --- one model ----------------------------------------------------------------------------
    def _images(self, model: Backbone, fingerprint: str, batch: PromptBatch) -> torch.Tensor:
        sampler = Sampler(model, self.settings, batch_size=self.batch_size)
        return generate_images(sampler, batch.prompts, batch.seeds, self.cache, fingerprint).to(model.device)

    def _score(self, images: dict, refs: dict, sets: dict[str, PromptBatch], seed: int) -> dict:
        """Every metric of the task table for one model's images (``refs``: the original's). Under
        several processes each holds its share of images; every summary syncs the metric states."""
        t, detectors = self.target, self.detectors
        device = images["forget"].device  # the models', detectors' and metric states' (NCCL syncs CUDA tensors)

        def labels(name: str, family: str) -> torch.Tensor:
            return sets[name].labels(family).to(device)

        judge = detectors[t.family]
        word = FAMILIES[t.family].index(t.word)
        predict = {name: judge.predict(x) for name, x in images.items()}
        metrics: dict[str, dict] = {}

        def rate(metric: SampleRate, *args) -> dict:
            metric.update(*args)
            return metric.summary(seed)

        metrics["forgetting.target_rate"] = rate(ClassRate(word), predict["forget"])
        metrics["preservation.retain_accuracy"] = rate(LabelAccuracy(), predict["unrelated"], labels("unrelated", t.family))
        metrics["preservation.near_accuracy"] = rate(LabelAccuracy(), predict["near"], labels("near", t.family))
        metrics["robustness.target_rate"] = rate(ClassRate(word), predict["synonym"])
        if self.rule.subject:
            subject = self.rule.subject
            kept = detectors[subject].predict(images["forget"])
            metrics["preservation.subject_kept"] = rate(LabelAccuracy(), kept, labels("forget", subject))
        # alignment: the other things the forget prompts asked for are still drawn
        asked = [f for f in ("shape", "colour", "style") if f != t.family]
        hits = torch.stack([detectors[f].predict(images["forget"]) == labels("forget", f) for f in asked]).float().mean(0)
        metrics["alignment.attribute_rate"] = rate(SampleRate(), hits)
        # image quality and closeness to the original, in the shape detector's feature space
        features = detectors["shape"].features
        pairs = [("retain", "unrelated", "unrelated")]
        if "remove_word" in refs:
            pairs.append(("remove_word", "forget", "remove_word"))
        for suffix, mine, theirs in pairs:
            fid = FID(feature=features)
            fid.update(refs[theirs], real=True)
            fid.update(images[mine], real=False)
            metrics[f"preservation.fid_{suffix}"] = fid.summary(seed)
            distance = FeatureDistance(TimmFeatureMaps(features))
            metrics[f"preservation.feature_distance_{suffix}"] = rate(distance, images[mine], refs[theirs])
        fid = FID(feature=features)
        for k, name in enumerate(("forget", "unrelated")):  # two sets: positions keep the CI layout-free
            order = sets[name].positions(offset=k * 1_000_000)
            fid.update(self._renders(sets[name], seed).to(device), real=True, order=order)
            fid.update(images[name], real=False, order=order)
        metrics["quality.fid"] = fid.summary(seed)
        return metrics

    def _renders(self, batch: PromptBatch, seed: int) -> torch.Tensor:
        """Real images of the scenes the prompts ask for: the world's "real set" for FID."""
        size = self._image_size
        return torch.stack([render_tensor(it.scene, size, np.random.default_rng([seed, s])) for it, s in zip(batch.items, batch.seeds)])

    # --- the evaluation -----------------------------------------------------------------------
    def run(self, seed: int) -> EvaluationOutput:
        original = self.original.build().to(self.device).eval()
        built = ((name, spec.build().to(self.device).eval()) for name, spec in self.methods.items())  # one at a time
        return self.compare(original, built, seed, total=len(self.methods))

    def compare(self, original: Backbone, models: Iterable[tuple[str, Backbone]], seed: int, total: int | None = None) -> EvaluationOutput:
        """Score the original model (as "original") and each (name, model) against it. Under several
        processes (DDP) every rank makes and scores its share of each prompt set, and all ranks
        return the same results."""
        self.detectors = load_world_detectors(self.detectors_dir, list(FAMILIES), original.device)
        used = set(self.rule.prompt_sets) | set(self.rule.reference_sets)
        sets = {n: b.part(share(len(b.items))) for n, b in flatten_sets(self.target.name, self.prompts_per_class, seed).items() if n in used}
        self._image_size = original.image_size
        original_id = model_fingerprint(original)
        total = None if total is None else total + 1
        progress = tqdm(total=total, desc=f"evaluating ({self.target.name})", unit="model", disable=not is_main())
        refs = {name: self._images(original, original_id, sets[name]) for name in self.rule.reference_sets}
        methods, hashes = {}, {}
        self.samples: dict[str, torch.Tensor] = {}
        for name, model in itertools.chain([(ORIGINAL, original)], models):
            if name == ORIGINAL and model is not original:
                raise IGMUError(f"'{ORIGINAL}' is the name of the original model: rename that method")
            start = time.perf_counter()
            if model.image_size != original.image_size:
                raise IGMUError(f"method '{name}' makes {model.image_size}px images, the original {original.image_size}px")
            fingerprint = original_id if model is original else model_fingerprint(model)
            images = {s: self._images(model, fingerprint, sets[s]) for s in self.rule.prompt_sets}
            with torch.inference_mode():
                metrics = self._score(images, refs, sets, seed)
            count, fraction = changed_parameters(model, original)
            metrics["efficiency.params_changed"] = exact(count)
            metrics["efficiency.params_changed_share"] = exact(round(fraction, 8))
            metrics.update(training_cost(model))
            unknown = set(metrics) - set(self.rule.metrics)
            assert not unknown, f"metrics outside the task table: {unknown}"
            methods[name] = {"aspects": by_aspect(metrics)}
            # the first forget images (same seeds for every model: a grid), from whichever ranks made them
            self.samples[name] = gather(images["forget"][: self.keep_samples])[: self.keep_samples].cpu()
            hashes[name] = model.hashes()
            progress.update(1)
            progress.set_postfix_str(f"{name}: {time.perf_counter() - start:.0f}s")
        progress.close()
        return EvaluationOutput(methods, hashes)


def training_cost(model: Backbone) -> dict:
    """Wall time and peak memory of the run that made ``model``, when its folder records them."""
    record = Path(model.source) / RUN_RECORD if model.source else None
    if record is None or not record.is_file():
        return {}
    data = json.loads(record.read_text())
    return {"efficiency.wall_time_s": exact(data["wall_time_s"]), "efficiency.peak_memory_mb": exact(data["peak_memory_mb"])}
