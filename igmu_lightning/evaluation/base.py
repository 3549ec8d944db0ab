"""What ``evaluate.py`` runs: an ``Evaluation`` turns a config into per-method results."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from igmu_lightning.backbone import Backbone, BackboneSpec
from igmu_lightning.evaluation.distributed import gather, gather_objects, is_main
from igmu_lightning.evaluation.results import exact
from igmu_lightning.evaluation.resume import Finished, FinishedMethods

ORIGINAL = "original"  # the name the model before unlearning is reported under


@dataclass
class EvaluationOutput:
    methods: dict = field(default_factory=dict)  # NAME -> {"aspects": {...}}
    model_hashes: dict = field(default_factory=dict)  # NAME -> {component: sha256}
    evaluators: dict = field(default_factory=dict)  # what judged: detectors, FID features, CI methods
    # NAME -> probe name -> an attack probe's outcomes (``evaluation.attack_probe.AttackOutcomes``):
    # evaluate.py writes each beside the results, as <results stem>.attacks/<NAME>/<probe>.json
    attacks: dict = field(default_factory=dict)
    # NAME -> the first forget-prompt images (K, 3, H, W) in [0, 1], the same prompts and seeds for
    # every model (``ModelComparison`` evaluations; empty for the others): image grids beside the
    # results and in W&B. ``sample_prompts``: those images' (prompt, seed), in order.
    samples: dict = field(default_factory=dict)
    sample_prompts: list = field(default_factory=list)


class Evaluation:
    """Base class of everything ``evaluate.py`` can run. ``device`` is where models and judges go;
    ``evaluate.py`` sets it to its process's device. ``shares_work``: the evaluation splits its
    prompts across processes (``evaluation.distributed``); the others run in one process only,
    since their metrics would count every sample once per process when they sync."""

    device: torch.device = torch.device("cpu")
    shares_work: bool = False

    def check(self) -> None:
        """Fail now, with one line, on anything ``run`` would fail on later: every model (also each
        of ``methods``) is checked before the first image is made. Subclasses add their files."""
        for value in vars(self).values():
            specs = value.values() if isinstance(value, dict) else [value]
            for spec in specs:
                if isinstance(spec, BackboneSpec):
                    spec.check()

    def run(self, seed: int) -> EvaluationOutput:
        raise NotImplementedError


class ModelComparison(Evaluation):
    """An evaluation that scores an original model and others against it, given the built models:
    what ``callbacks.EvalCallback`` runs on the model being trained. ``samples`` holds, after
    ``compare``, the first images of each model (same prompts and seeds) for an image grid."""

    samples: dict[str, torch.Tensor]
    sample_prompts: list[tuple[str, int]]
    keep_samples: int = 8  # forget-prompt images kept per model for image grids
    # set by evaluate.py: each method kept as it is scored, and taken back on a rerun (``resume``)
    finished_methods: FinishedMethods | None = None

    def resumed(self, name: str, model_id: str, original_id: str, output: EvaluationOutput) -> bool:
        """Whether ``name`` was scored by an earlier, interrupted run of this evaluation (same config,
        seed and models: ``model_id`` / ``original_id`` are the fingerprints); if so its results,
        attack outcomes and images are put into ``output`` and ``samples``. Rank 0 reads the record,
        every rank takes its answer, so all skip the same methods."""
        if self.finished_methods is None:
            return False
        found = gather_objects(self.finished_methods.load(name, model_id, original_id) if is_main() else None)[0]
        if found is None:
            return False
        output.methods[name], output.model_hashes[name] = found.result, found.hashes
        if found.attacks:
            output.attacks[name] = found.attacks
        if found.samples is not None:
            self.samples[name], self.sample_prompts = found.samples, found.sample_prompts
        return True

    def finished(self, name: str, model_id: str, original_id: str, output: EvaluationOutput) -> None:
        """Keep ``name``'s part of ``output`` (rank 0 writes), now that it is scored."""
        if self.finished_methods is not None and is_main():
            record = Finished(output.methods[name], output.model_hashes[name], output.attacks.get(name, {}),
                              self.samples.get(name), self.sample_prompts)  # fmt: skip
            self.finished_methods.save(name, model_id, original_id, record)

    def keep(self, name: str, images: torch.Tensor, batch) -> None:
        """Keep the first ``keep_samples`` of this process's ``images`` of ``batch`` (a
        ``PromptBatch``), gathered across processes in rank order, as ``samples[name]``."""
        k = self.keep_samples
        self.samples[name] = gather(images[:k])[:k].cpu()
        shares = gather_objects(list(zip(batch.prompts[:k], batch.seeds[:k])))
        self.sample_prompts = [(p, int(s)) for share in shares for p, s in share][:k]

    def compare(self, original: Backbone, models: Iterable[tuple[str, Backbone]], seed: int, total: int | None = None) -> EvaluationOutput:
        """Score ``original`` (as ``ORIGINAL``) and each (name, model); every process returns the same results."""
        raise NotImplementedError


class Inventory(Evaluation):
    """Loads a model and records what it is (component hashes, parameter counts) without
    generating anything: the quickest check that a model folder is usable before a long run.

    Args:
        backbone: the model to inspect.
        name: the method name under which it is reported.
    """

    def __init__(self, backbone: BackboneSpec, name: str = "model") -> None:
        self.backbone, self.name = backbone, name

    def run(self, seed: int) -> EvaluationOutput:
        model = self.backbone.build().to(self.device)
        counts = {c: sum(p.numel() for p in getattr(model, c).parameters()) for c in ("unet", "text_encoder", "vae")}
        efficiency = {f"params.{c}": exact(n) for c, n in counts.items()}
        return EvaluationOutput({self.name: {"aspects": {"efficiency": efficiency}}}, {self.name: model.hashes()})
