"""Relearning as a model-level robustness probe: the unlearned model's copy is fine-tuned on the
concept's images (``attacks.relearning.Relearning``) and, after each checkpoint's k steps, its
forget-set images are judged like the forget set's:

    robustness.<name>.target_rate_at_<k>   the target rate after k steps (n, Wilson / cluster interval)
    robustness.<name>.steps_to_half        the first checkpoint k whose rate reaches half the original
                                           model's forget rate (exact; skipped, with why, when no
                                           checkpoint reaches it)

It is a robustness probe of ``WorldEvaluation`` and ``PromptSetTargetRate`` (list it under
``probes``): ``score`` relearns each unlearned model (the original is not relearned: it has nothing
to come back) and judges with the evaluation's own judge, against the original model's forget
images. ``world_relearning`` runs it alone on a world target."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from igmu_lightning.attacks.relearning import Relearning
from igmu_lightning.backbone import Backbone, BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import ORIGINAL
from igmu_lightning.evaluation.distributed import gather
from igmu_lightning.evaluation.generation import generate_images
from igmu_lightning.evaluation.probes import Probe, ProbeContext
from igmu_lightning.evaluation.results import exact
from igmu_lightning.evaluation.scoring import Scorecard
from igmu_lightning.evaluation.tasks import task_rule
from igmu_lightning.evaluation.world import WORLD_DETECTORS, load_world_detectors
from igmu_lightning.evaluation.world_sets import PromptBatch, flatten_sets, set_sizes
from igmu_lightning.sampling import Sampler, SamplerSettings
from igmu_lightning.world.concepts import FAMILIES, TARGETS


def steps_to_half(rates: dict[int, float], original_rate: float) -> int | None:
    """The first step count k (in increasing order) whose target rate is at least half the
    original model's; None when none is."""
    for k in sorted(rates):
        if rates[k] >= original_rate / 2:
            return k
    return None


class RelearningProbe(Probe):
    """Args:
    relearning: the fine-tuning attack (its checkpoints are the k reported).
    name: the probe's name in the results (``robustness.<name>.*``).
    batch_size: images per sampler batch when the relearned copies draw the forget prompts.
    """

    def __init__(self, relearning: Relearning, name: str = "relearning", batch_size: int = 64) -> None:
        if not isinstance(relearning, Relearning):
            raise IGMUError(f"RelearningProbe needs an igmu_lightning.attacks.Relearning, got {type(relearning).__name__}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise IGMUError(f"probe name '{name}' must be letters, digits, '_' or '-' (it becomes robustness.<name>.*)")
        if batch_size < 1:
            raise IGMUError(f"batch_size of probe '{name}' must be >= 1, got {batch_size}")
        self.relearning, self.name, self.batch_size = relearning, name, batch_size

    def score(self, card: Scorecard, context: ProbeContext, generate: Callable) -> None:
        """Relearn ``context.model`` and add its curve: the evaluation's forget prompts and seeds,
        judged by ``context.judge``; the reference is the original model's forget rate."""
        if context.method == ORIGINAL:
            for k in self.relearning.checkpoints:
                card.skip(f"robustness.{self.name}.target_rate_at_{k}", "the original model is not relearned: it forgot nothing")
            card.skip(f"robustness.{self.name}.steps_to_half", "the original model is not relearned: it forgot nothing")
            return None
        if context.model is None or context.judge is None or context.forget is None or context.original_forget_images is None:
            raise IGMUError(f"relearning probe '{self.name}' needs the model, its forget prompts, a judge and the original's "
                            "forget images: use it in WorldEvaluation or PromptSetTargetRate")  # fmt: skip
        forget, settings = context.forget, context.sampler or SamplerSettings()
        device = context.forget_images.device if context.forget_images is not None else context.model.device
        with torch.inference_mode():
            original_rate = float(gather(context.judge(context.original_forget_images).float().flatten().to(device)).mean())

        def sample(model: Backbone) -> torch.Tensor:
            return generate_images(Sampler(model, settings, batch_size=self.batch_size), forget.prompts, forget.seeds).to(device)

        curve = self.curve(context.model, sample, context.judge, context.seed)
        self.report(card, {k: hits.to(device) for k, hits in curve.items()}, original_rate, forget.prompt_ids(device))
        return None

    def curve(self, model: Backbone, sample: Callable[[Backbone], torch.Tensor], hits_of: Callable[[torch.Tensor], torch.Tensor],
              seed: int = 0) -> dict[int, torch.Tensor]:  # fmt: skip
        """k -> the per-image hits (0/1) of the relearned copy's images after k steps. ``sample``:
        a model -> its forget-set images; ``hits_of``: images -> target judged present."""
        curve = {}
        for k, relearned in self.relearning.relearn(model, seed):
            with torch.no_grad():
                curve[k] = hits_of(sample(relearned)).float().flatten().cpu()
        return curve

    def report(self, card: Scorecard, curve: dict[int, torch.Tensor], original_rate: float, ids: torch.Tensor | None = None) -> None:
        """Add ``target_rate_at_<k>`` for every k and ``steps_to_half`` (or why it is skipped).
        Under several processes ``curve`` holds this process's images; the rates are of all."""
        rates = {}
        for k, hits in sorted(curve.items()):
            card.rate(f"robustness.{self.name}.target_rate_at_{k}", hits, ids)
            rates[k] = float(gather(hits.float()).mean())
        name = f"robustness.{self.name}.steps_to_half"
        if original_rate <= 0:
            card.skip(name, "the original model's target rate is 0: there is no rate to return to")
            return
        k = steps_to_half(rates, original_rate)
        if k is None:
            card.skip(name, f"not reached within {max(rates)} steps (half the original's rate: {original_rate / 2:.4f}; "
                            f"rates at {', '.join(f'{k}: {r:.4f}' for k, r in sorted(rates.items()))})")  # fmt: skip
        else:
            card.add(name, exact(k))

    def record(self) -> dict:
        return {"class": type(self).__name__, "batch_size": self.batch_size, **self.relearning.to_config()["init_args"]}


def world_relearning(
    model: Backbone | BackboneSpec,
    original: Backbone | BackboneSpec,
    target: str = "object",
    probe: RelearningProbe | None = None,
    detectors: str = WORLD_DETECTORS,
    prompts_per_set: int = 64,
    sampler: SamplerSettings | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """The relearning metrics of one world model (one process): its copy relearned on the target's
    renders, each checkpoint's forget-set images judged by the target family's detector, and the
    original model's forget rate as the reference. Returns the scorecard's ``{"aspects": ...,
    "skipped": ...}`` plus ``original_target_rate`` and the probe's record."""
    if target not in TARGETS:
        raise IGMUError(f"unknown world target '{target}': choose one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    model = model.build() if isinstance(model, BackboneSpec) else model
    original = original.build() if isinstance(original, BackboneSpec) else original
    model.eval(), original.eval()
    probe = probe or RelearningProbe(Relearning(world_target=target, preset="quick"))
    judge = load_world_detectors(detectors, [t.family], model.device)[t.family]
    word = FAMILIES[t.family].index(t.word)
    forget: PromptBatch = flatten_sets(target, set_sizes(target, prompts_per_set, None, None), seed)["forget"]
    settings = sampler or SamplerSettings()

    def sample(m: Backbone) -> torch.Tensor:
        return generate_images(Sampler(m, settings, batch_size=batch_size), forget.prompts, forget.seeds)

    def hits_of(images: torch.Tensor) -> torch.Tensor:
        return judge.predict(images) == word

    original_rate = float(hits_of(sample(original)).float().mean())
    card = Scorecard(task_rule(t.category), t.category, seed)
    probe.report(card, probe.curve(model, sample, hits_of, seed), original_rate, forget.prompt_ids())
    return {**card.result(), "original_target_rate": original_rate, "probe": probe.record()}
