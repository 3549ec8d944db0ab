"""The attack protocol: an attack takes the model under attack (an unlearned one), the model before
unlearning when it needs one, and a batch of prompts with their seeds, and returns one adversarial
prompt per input prompt, readable and rerunnable with the same seed.

Attacks sit below algorithms and evaluation (layer of ``modules``): the evaluation wraps them as
robustness probes (``robustness.<attack>.pre_asr`` / ``.asr``), and an adversarial-training method
(AdvUnlearn) calls them inside its training step. They work on ``Backbone.token_embeddings`` /
``encode_embeddings`` and the sampler's differentiable entry (``Sampler.guided_noise``,
``sample_embeddings``), every prompt of the batch at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import SamplerSettings

Judge = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [0, 1] -> success per image (B,) bool


@dataclass
class AttackContext:
    """What an attack may use.

    model: the model under attack (its weights are never changed; ``Relearning`` works on a copy).
    prompts, seeds: the prompts to attack, one seed each (the seed of the image that judges it).
    concept: the erased concept's words (Ring-A-Bell's concept vector, concept inversion's token).
    original: the model before unlearning (UnlearnDiffAtk's target images, P4D's target noise).
    sampler: the evaluation's sampling settings: adversarial prompts are judged with them.
    judge: images -> success, for attacks that stop at the first success (UnlearnDiffAtk).
    seed: the seed of the attack's own random draws (timesteps, noise, initial tokens).
    """

    model: Backbone
    prompts: list[str]
    seeds: list[int]
    concept: str = ""
    original: Backbone | None = None
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    judge: Judge | None = None
    seed: int = 0


@dataclass
class AttackResult:
    """One entry per attacked prompt, in the context's order.

    prompts: the adversarial prompt found for each (text the tokenizer reads back to the same tokens
        where the attack is discrete; for embedding-space attacks a readable nearest-token form).
    details: per-prompt facts worth saving beside the results (steps used, final loss, tokens).
    embeddings: for attacks whose result is an embedding (concept inversion, soft prompts), the
        conditioning (B, 77, D) to generate with instead of encoding ``prompts``; else None.
    seconds: wall time of the attack on this batch.
    """

    prompts: list[str]
    details: list[dict] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    seconds: float = 0.0


class Attack:
    """One attack. Subclasses set ``name`` and implement ``run``; ``to_config`` is what the results
    record about the attack (its settings)."""

    name: str = "attack"
    needs_original: bool = False  # the evaluation then passes the model before unlearning
    needs_judge: bool = False
    finds_embeddings: bool = False  # its result is conditioning (AttackResult.embeddings), read out from embeddings

    def run(self, context: AttackContext) -> AttackResult:
        raise NotImplementedError

    def to_config(self) -> dict:
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(vars(self))}


def preset_settings(kind: str, presets: dict[str, dict], preset: str, **given) -> dict:
    """The preset's settings with every ``given`` value that is not None in place of its own; an
    unknown preset is one error line naming ``kind`` and the presets there are."""
    if preset not in presets:
        raise IGMUError(f"unknown {kind} preset '{preset}': choose one of {', '.join(presets)}")
    return {**presets[preset], **{key: value for key, value in given.items() if value is not None}}
