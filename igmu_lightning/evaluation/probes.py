"""Robustness probes: each makes prompts (with seeds) meant to bring an erased target back, and is
reported as ``robustness.<name>.target_rate``. The world's synonym paraphrases and a static prompt
file are probes; an attack (UnlearnDiffAtk, Ring-A-Bell) plugs in as a probe whose prompts are
optimised against the model under evaluation, which the context hands it
(``evaluation.attack_probe.AttackProbe``: its own metrics, through ``Probe.score``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from igmu_lightning.backbone import Backbone
from igmu_lightning.data.prompts import read_prompt_lines
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.distributed import share
from igmu_lightning.evaluation.scoring import Scorecard
from igmu_lightning.evaluation.world_sets import PromptBatch, flatten_sets
from igmu_lightning.sampling import SamplerSettings
from igmu_lightning.world.concepts import TARGETS
from igmu_lightning.world.prompts import PromptItem

PROBE_SEEDS = 500_000  # seed block of probe prompts: after the world's five sets (100_000 each)


Success = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [0, 1] -> target drawn, (B,) bool


@dataclass
class ProbeContext:
    """What a probe may draw on: the erasure target (a world target, or the IGMU task key), the
    evaluation's seed, the prompts per class of the world's sets (None elsewhere), and the model
    under evaluation (attacks optimise against it).

    For attacks (``evaluation.attack_probe``) the evaluation also hands over: ``original`` (the
    model before unlearning), ``forget`` (this process's forget prompts and seeds: the world's
    forget set, or the evaluation's prompt set), ``forget_images`` (the model's images of them,
    already made), ``judge`` (images -> the target is drawn, the evaluation's own judge and
    target), ``sampler`` (the evaluation's sampling settings), ``concept`` (the erased concept's
    words), ``method`` (the model's name in the results) and ``original_forget_images`` (the
    original model's images of ``forget``: relearning's reference rate)."""

    target: str
    seed: int
    per_class: int | dict[str, int] | None = None
    model: Backbone | None = None
    original: Backbone | None = None
    forget: PromptBatch | None = None
    forget_images: torch.Tensor | None = None
    judge: Success | None = None
    sampler: SamplerSettings | None = None
    concept: str = ""
    method: str = ""
    original_forget_images: torch.Tensor | None = None


class Probe:
    """One robustness probe. Subclasses set ``name`` and implement ``prompts``; a probe that makes
    images another way (an embedding attack) overrides ``images``."""

    name: str = "probe"

    def prompts(self, context: ProbeContext) -> PromptBatch:
        """The whole probe's prompts and seeds, the same for every process."""
        raise NotImplementedError

    def images(self, context: ProbeContext, generate: Callable[[PromptBatch], torch.Tensor]) -> tuple[PromptBatch, torch.Tensor]:
        """This process's share of the prompts and the model's images of them."""
        batch = self.prompts(context)
        part = batch.part(share(len(batch.items), f"'{self.name}' probe prompts"))
        return part, generate(part)

    def score(self, card: Scorecard, context: ProbeContext, generate: Callable[[PromptBatch], torch.Tensor]) -> object | None:
        """Add the probe's metrics to ``card``: ``robustness.<name>.target_rate``, the share of its
        images ``context.judge`` finds the target in. Returns what to save beside the results (an
        attack's outcomes), or None."""
        batch, images = self.images(context, generate)
        with torch.inference_mode():
            hits = context.judge(images)
        card.rate(f"robustness.{self.name}.target_rate", hits, batch.prompt_ids(images.device))
        return None

    def check(self) -> None:
        """Fail now, with one line, on anything ``prompts`` would fail on later (a missing file)."""

    def record(self) -> dict:
        """What the probe is, for the results' ``run.evaluators.probes``."""
        return {"class": type(self).__name__}


class SynonymProbe(Probe):
    """The world's paraphrase templates naming the target by a synonym ("trigon" for "triangle"):
    an eraser that only learned the main word leaves them working."""

    name = "synonym"

    def prompts(self, context: ProbeContext) -> PromptBatch:
        if context.target not in TARGETS or context.per_class is None:
            raise IGMUError(f"the synonym probe needs a world target ({', '.join(TARGETS)}), not '{context.target}': "
                            "use PromptFileProbe with a file of paraphrases")  # fmt: skip
        return flatten_sets(context.target, context.per_class, context.seed)["synonym"]


class PromptFileProbe(Probe):
    """Fixed prompts from a file, one a line (paraphrases, translations, adversarial prompts found
    offline): every prompt counts, also those that worked before any attack.

    Args:
        path: the prompt file (``data.prompts.read_prompt_lines``: a ``.txt`` or headerless ``.csv``).
        name: the probe's name in the results (default: the file's stem).
        samples_per_prompt: images per prompt, each with its own seed.
    """

    def __init__(self, path: str, name: str | None = None, samples_per_prompt: int = 1) -> None:
        self.path, self.name = path, name or Path(path).stem
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise IGMUError(f"probe name '{self.name}' must be letters, digits, '_' or '-' (it becomes robustness.<name>.*): set name")
        if samples_per_prompt < 1:
            raise IGMUError(f"samples_per_prompt of probe '{self.name}' must be >= 1, got {samples_per_prompt}")
        self.samples_per_prompt = samples_per_prompt

    def _lines(self) -> list[str]:
        return read_prompt_lines(self.path, f"prompt file of probe '{self.name}'")

    def check(self) -> None:
        self._lines()

    def prompts(self, context: ProbeContext) -> PromptBatch:
        lines = self._lines()
        items = [PromptItem(p, None) for p in lines for _ in range(self.samples_per_prompt)]
        base = context.seed * 1_000_003 + PROBE_SEEDS
        return PromptBatch(items, [base + i for i in range(len(items))])

    def record(self) -> dict:
        return {"class": type(self).__name__, "path": self.path, "samples_per_prompt": self.samples_per_prompt}


def check_probes(probes: list[Probe]) -> list[Probe]:
    """Probes with distinct names (each gets its own ``robustness.<name>.*`` keys)."""
    names = [p.name for p in probes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise IGMUError(f"two probes are named {', '.join(twice)}: give each probe its own name")
    return list(probes)


PROBES: dict[str, type[Probe]] = {"synonym": SynonymProbe}  # the task table's default probes by name


class PromptCSVProbe(PromptFileProbe):
    """Fixed prompts from a CSV with their own seeds: UnlearnDiffAtk's ``prompts/*.csv`` (columns
    ``prompt`` and ``evaluation_seed``, any others ignored: ``data.seeded_prompts``). Each prompt
    is generated once, with its file's seed, as the benchmark judges it.

    Args:
        path: the CSV file.
        name: the probe's name in the results (default: the file's stem).
    """

    def __init__(self, path: str, name: str | None = None) -> None:
        super().__init__(path, name)

    def _rows(self) -> list[tuple[str, int]]:
        from igmu_lightning.data.seeded_prompts import read_seeded_prompts

        return read_seeded_prompts(self.path, f"prompt CSV of probe '{self.name}'")

    def check(self) -> None:
        self._rows()

    def prompts(self, context: ProbeContext) -> PromptBatch:
        rows = self._rows()
        return PromptBatch([PromptItem(p, None) for p, _ in rows], [s for _, s in rows])

    def record(self) -> dict:
        return {"class": type(self).__name__, "path": self.path}
