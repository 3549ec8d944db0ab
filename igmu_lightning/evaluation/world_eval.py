"""EvalIGMU on the embedded world: every aspect of one erasure target, for the original model and
each unlearned model, with the world's detectors as judges and real renders as the FID reference."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from igmu_lightning.artifacts import ImageCache, model_identity
from igmu_lightning.backbone import Backbone, BackboneSpec, Pretrained
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import ORIGINAL, EvaluationOutput, ModelComparison
from igmu_lightning.evaluation.distributed import is_main, share
from igmu_lightning.evaluation.evaluators import CI_METHODS, detector_record, fid_record
from igmu_lightning.evaluation.generation import generate_images
from igmu_lightning.evaluation.probes import PROBES, Probe, ProbeContext, check_probes
from igmu_lightning.evaluation.scoring import Scorecard
from igmu_lightning.evaluation.tasks import task_rule
from igmu_lightning.evaluation.world import WORLD_DETECTORS, WORLD_MODEL, load_world_detectors
from igmu_lightning.evaluation.world_sets import PromptBatch, flatten_sets, set_sizes
from igmu_lightning.metrics.paired import TimmFeatureMaps
from igmu_lightning.sampling import Sampler, SamplerSettings
from igmu_lightning.world.concepts import FAMILIES, TARGETS
from igmu_lightning.world.render import render_tensor

__all__ = ["ORIGINAL", "WorldEvaluation", "flatten_sets"]


class WorldEvaluation(ModelComparison):
    """All EvalIGMU aspects of one world target (object / style / attribute).

    Args:
        target: which erasure task of the world.
        methods: name -> unlearned model; the original model is always scored too, as "original".
        original: the model before unlearning (default: the shipped base model).
        detectors: folder of the world's detectors, one per family.
        prompts_per_set: the least number of prompts of every prompt set, spread evenly over its
            classes (64: every headline rate has n >= 64, a Wilson half-width <= 0.12 at p = 0.5).
        max_half_width: instead of a count, the 95% half-width wanted for every rate; the set size
            is the n that Wilson needs at the worst case p = 0.5 (0.05 -> 381).
        prompts_per_class: a fixed count per class of every set instead (overrides prompts_per_set).
        sampler: sampling settings, the same for every model.
        batch_size: images per sampler batch.
        cache_dir: image cache (None: no cache).
        probes: robustness probes, each reported as ``robustness.<name>.target_rate`` (default:
            the task table's, ``[SynonymProbe]``).
    """

    shares_work = True

    def __init__(
        self,
        target: str = "object",
        methods: dict[str, BackboneSpec] | None = None,
        original: BackboneSpec | None = None,
        detectors: str = WORLD_DETECTORS,
        prompts_per_set: int = 64,
        max_half_width: float | None = None,
        prompts_per_class: int | None = None,
        sampler: SamplerSettings | None = None,
        batch_size: int = 64,
        cache_dir: str | None = "outputs/cache/images",
        probes: list[Probe] | None = None,
    ) -> None:
        if target not in TARGETS:
            raise IGMUError(f"unknown world target '{target}': choose one of {', '.join(TARGETS)}")
        if methods and ORIGINAL in methods:
            raise IGMUError(f"'{ORIGINAL}' is the name of the original model: rename that method")
        self.target, self.rule = TARGETS[target], task_rule(TARGETS[target].category)
        self.per_class = set_sizes(self.target.name, prompts_per_set, max_half_width, prompts_per_class)
        self.methods = dict(methods or {})
        self.original = original or Pretrained(WORLD_MODEL)
        self.detectors_dir = detectors
        self.settings, self.batch_size = sampler or SamplerSettings(), batch_size
        self.cache = ImageCache(cache_dir) if cache_dir else None
        self.probes = check_probes(probes if probes is not None else [PROBES[name]() for name in self.rule.probes])

    # --- one model ----------------------------------------------------------------------------
    def _images(self, model: Backbone, fingerprint: str, batch: PromptBatch) -> torch.Tensor:
        sampler = Sampler(model, self.settings, batch_size=self.batch_size)
        return generate_images(sampler, batch.prompts, batch.seeds, self.cache, fingerprint).to(model.device)

    def _judge(self, images: torch.Tensor) -> torch.Tensor:
        """Whether the target's family detector finds the target in each image: the target rates' judge."""
        return self.detectors[self.target.family].predict(images) == FAMILIES[self.target.family].index(self.target.word)

    def _score(self, card: Scorecard, images: dict, refs: dict, sets: dict[str, PromptBatch], seed: int) -> Scorecard:
        """Every metric of the task table for one model's images (``refs``: the original's), beside
        the probes' ones already on ``card``. Under several processes each holds its share of
        images; every summary syncs the metric states."""
        t, detectors = self.target, self.detectors
        device = images["forget"].device  # the models', detectors' and metric states' (NCCL syncs CUDA tensors)

        def labels(name: str, family: str) -> torch.Tensor:
            return sets[name].labels(family).to(device)

        def ids(name: str) -> torch.Tensor:
            return sets[name].prompt_ids(device)

        judge = detectors[t.family]
        word = FAMILIES[t.family].index(t.word)
        predict = {name: judge.predict(x) for name, x in images.items()}
        card.target_rate("forgetting.target_rate", predict["forget"], word, ids("forget"))
        card.rate("preservation.retain_accuracy", predict["unrelated"] == labels("unrelated", t.family), ids("unrelated"))
        card.rate("preservation.near_accuracy", predict["near"] == labels("near", t.family), ids("near"))
        if self.rule.subject:
            subject = self.rule.subject
            kept = detectors[subject].predict(images["forget"]) == labels("forget", subject)
            card.rate("preservation.subject_kept", kept, ids("forget"))
        # alignment: the other things the forget prompts asked for are still drawn
        asked = [f for f in ("shape", "colour", "style") if f != t.family]
        hits = torch.stack([detectors[f].predict(images["forget"]) == labels("forget", f) for f in asked]).float().mean(0)
        card.rate("alignment.attribute_rate", hits, ids("forget"))
        # image quality and closeness to the original, in the shape detector's feature space
        features = detectors["shape"].features
        pairs = [("retain", "unrelated", "unrelated")]
        if "remove_word" in refs:
            pairs.append(("remove_word", "forget", "remove_word"))
        for suffix, mine, theirs in pairs:
            card.closeness(suffix, images[mine], refs[theirs], ids(mine), features, TimmFeatureMaps(features))
        quality = [  # two sets: positions keep the CI layout-free
            (self._renders(sets[name], seed).to(device), images[name], sets[name].positions(offset=k * 1_000_000))
            for k, name in enumerate(("forget", "unrelated"))
        ]
        card.fid("quality.fid", features, quality)
        return card

    def _renders(self, batch: PromptBatch, seed: int) -> torch.Tensor:
        """Real images of the scenes the prompts ask for: the world's "real set" for FID."""
        size = self._image_size
        return torch.stack([render_tensor(it.scene, size, np.random.default_rng([seed, s])) for it, s in zip(batch.items, batch.seeds)])

    # --- the evaluation -----------------------------------------------------------------------
    def check(self) -> None:
        """The detectors, the probes' files and every model (the original and each method) load,
        before any image."""
        load_world_detectors(self.detectors_dir, list(FAMILIES))
        for probe in self.probes:
            probe.check()
        super().check()

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
        whole = {n: b for n, b in flatten_sets(self.target.name, self.per_class, seed).items() if n in used}
        sets = {n: b.part(share(len(b.items))) for n, b in whole.items()}
        self._image_size = original.image_size
        original_hashes, original_id = model_identity(original)
        total = None if total is None else total + 1
        progress = tqdm(total=total, desc=f"evaluating ({self.target.name})", unit="model", disable=not is_main())
        # the original's images of the reference sets and of the forget set (every probe judges against
        # those), made once: its own scores reuse them
        original_images = {n: self._images(original, original_id, sets[n]) for n in dict.fromkeys(("forget", *self.rule.reference_sets))}
        refs = {name: original_images[name] for name in self.rule.reference_sets}
        output = EvaluationOutput()
        self.samples: dict[str, torch.Tensor] = {}
        for name, model in itertools.chain([(ORIGINAL, original)], models):
            if name == ORIGINAL and model is not original:
                raise IGMUError(f"'{ORIGINAL}' is the name of the original model: rename that method")
            start = time.perf_counter()
            if model.image_size != original.image_size:
                raise IGMUError(f"method '{name}' makes {model.image_size}px images, the original {original.image_size}px")
            # the weights hashed once per model: for the fingerprint and for the results' record
            hashes, model_id = (original_hashes, original_id) if model is original else model_identity(model)
            if self.resumed(name, model_id, original_id, output):
                progress.update(1)
                progress.set_postfix_str(f"{name}: kept from an earlier run")
                continue
            images = {s: original_images[s] if model is original and s in original_images else self._images(model, model_id, sets[s])
                      for s in self.rule.prompt_sets}  # fmt: skip
            card = Scorecard(self.rule, self.target.category, seed)
            context = ProbeContext(self.target.name, seed, self.per_class, model, original=original, forget=sets["forget"],
                                   forget_images=images["forget"], judge=self._judge, sampler=self.settings,
                                   concept=self.target.word, method=name, original_forget_images=original_images["forget"])  # fmt: skip
            for probe in self.probes:  # outside inference mode: attacks need gradients
                found = probe.score(card, context, lambda batch, model=model, model_id=model_id: self._images(model, model_id, batch))
                if found is not None:
                    output.attacks.setdefault(name, {})[probe.name] = found
            with torch.inference_mode():
                self._score(card, images, refs, sets, seed)
            card.efficiency(model, original)
            output.methods[name] = card.result()
            # the first forget images (same seeds for every model: a grid), from whichever ranks made them
            self.keep(name, images["forget"], sets["forget"])
            output.model_hashes[name] = hashes
            self.finished(name, model_id, original_id, output)
            progress.update(1)
            progress.set_postfix_str(f"{name}: {time.perf_counter() - start:.0f}s")
        progress.close()
        output.evaluators, output.samples, output.sample_prompts = self._evaluators(whole), self.samples, self.sample_prompts
        return output

    def _evaluators(self, whole: dict[str, PromptBatch]) -> dict:
        """Provenance: the detectors, the FID features, the interval methods, each set's size and the probes."""
        judges = {f: detector_record(d, Path(self.detectors_dir) / f) for f, d in self.detectors.items()}
        fid = fid_record(str(Path(self.detectors_dir) / "shape"), self.detectors["shape"].features, self._image_size)
        sizes = {n: {"images": len(b.items), "prompts": len(set(b.groups))} for n, b in sorted(whole.items())}
        probes = {p.name: p.record() for p in self.probes}
        return {"detectors": judges, "target_judge": self.target.family, "fid": fid, "ci": CI_METHODS, "prompt_sets": sizes,
                "probes": probes}  # fmt: skip

