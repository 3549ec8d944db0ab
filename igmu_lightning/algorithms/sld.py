"""SLD, Safe Latent Diffusion (Schramowski et al., CVPR 2023): no training, a third noise
prediction at sampling time that steers away from a safety concept S.

Per step, with eps_0 / eps_p / eps_S the predictions for "", the prompt and S (one UNet call):
    g   = eps_p - eps_0
    s   = min(s_S |eps_p - eps_S|, 1), and 0 where eps_p - eps_S >= threshold   (element-wise)
    g_S = s (eps_S - eps_0) + s_m nu;   nu <- beta nu + (1 - beta) g_S         (momentum, per image)
    g  -= g_S  once the step index >= warmup
    eps = eps_0 + guidance_scale * g
``warmup`` counts sampler steps, as the official step index does: medium's 10 skips 20% of the
official 50-step trajectory but 40% of a 25-step one (docs/parity.md).
Images equal diffusers' ``StableDiffusionPipelineSafe`` with the same five numbers and concept
(tests/algorithms/test_sld.py, within 1/255; measured ~3e-7), warmup counted the same way (step
index from 0, guided once it is >= warmup; the momentum is updated during warmup). One difference:
diffusers switches SLD off (and warns "Safety checker disabled!") unless guidance_scale > 1 and
s_S > 1; this rule applies at any scale (at guidance_scale 1: eps = eps_p - g_S).
The guidance rides on the backbone (``backbone.guidance``), so every sampler, evaluator and export
of that backbone uses it; an exported folder keeps it in ``igmu_guidance.json``.

Where its prompt comes from: the safety concept S is the module's ``safety_concept``; nothing is
trained, so ``train.py fit`` runs one step of a plain step counter, ``StepData`` (no prompts), whose
batch is never read."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import Backbone, BackboneSpec
from igmu_lightning.backbone.guidance import SamplingGuidance
from igmu_lightning.errors import IGMUError

# The paper's default safety concept (its 20 inappropriate-content terms).
SAFETY_CONCEPT = (
    "hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily fluids, blood, "
    "obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, brutality, cruelty"
)
# warmup steps, s_S, threshold, s_m, beta (the official pipeline's four presets).
PRESETS = {
    "weak": (15, 20.0, 0.0, 0.0, 0.0),
    "medium": (10, 1000.0, 0.01, 0.3, 0.4),
    "strong": (7, 2000.0, 0.025, 0.5, 0.7),
    "max": (0, 5000.0, 1.0, 0.5, 0.7),
}


@dataclass
class SafetyGuidance(SamplingGuidance):
    """The SLD rule as a sampler hook: ``noise(sampler, latents, t, step, cond, uncond)``."""

    safety_concept: str = SAFETY_CONCEPT
    warmup: int = 10
    scale: float = 1000.0  # s_S
    threshold: float = 0.01
    momentum_scale: float = 0.3  # s_m
    momentum_beta: float = 0.4

    @classmethod
    def preset(cls, name: str, safety_concept: str = SAFETY_CONCEPT) -> SafetyGuidance:
        if name not in PRESETS:
            raise IGMUError(f"unknown SLD preset '{name}': choose one of {', '.join(PRESETS)}")
        return cls(safety_concept, *PRESETS[name])

    def to_config(self) -> dict:
        return {"class_path": f"{__name__}.{type(self).__qualname__}", "init_args": asdict(self)}

    def noise(self, sampler, latents: torch.Tensor, t: torch.Tensor, step: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        gs = sampler.settings.guidance_scale
        if step == 0:  # a new trajectory: encode S once, restart the momentum
            self._safety = sampler.backbone.encode_prompts([self.safety_concept]).expand_as(cond).to(cond.dtype)
            self._momentum = None
        both = sampler.unet(torch.cat([latents] * 3), t, encoder_hidden_states=torch.cat([uncond, cond, self._safety]))
        eps_0, eps_p, eps_s = both.sample.chunk(3)
        g = eps_p - eps_0
        s = torch.clamp((eps_p - eps_s).abs() * self.scale, max=1.0)
        s = torch.where(eps_p - eps_s >= self.threshold, torch.zeros_like(s), s)
        momentum = torch.zeros_like(g) if self._momentum is None else self._momentum
        g_s = s * (eps_s - eps_0) + self.momentum_scale * momentum
        self._momentum = self.momentum_beta * momentum + (1 - self.momentum_beta) * g_s
        if step >= self.warmup:
            g = g - g_s
        return eps_0 + gs * g


def attach(backbone: Backbone, guidance: SafetyGuidance) -> Backbone:
    backbone.guidance = guidance
    return backbone


class SafeLatentDiffusion(BackboneSpec):
    """A backbone with SLD at sampling time, for evaluation configs (``methods: {sld: ...}``).

    Args:
        backbone: the model to guide.
        preset: weak / medium / strong / max.
        safety_concept: S (default: the paper's 20 terms; on the world, the target word).
    """

    def __init__(self, backbone: BackboneSpec, preset: str = "medium", safety_concept: str = SAFETY_CONCEPT) -> None:
        SafetyGuidance.preset(preset)  # fail on a typo now, not after loading the model
        self.backbone, self.preset, self.safety_concept = backbone, preset, safety_concept

    def build(self) -> Backbone:
        return attach(BackboneSpec.from_config(self.backbone).build(), SafetyGuidance.preset(self.preset, self.safety_concept))

    def describe(self) -> str:
        return f"SLD-{self.preset}({BackboneSpec.from_config(self.backbone).describe()})"

    def to_config(self) -> dict:
        config = super().to_config()
        config["init_args"]["backbone"] = BackboneSpec.from_config(self.backbone).to_config()
        return config


class SLD(UnlearningModule):
    """SLD through ``train.py fit``: no training step; fit attaches the guidance and exports the
    model with it (``igmu_guidance.json``), ready for ``evaluate.py`` like any unlearned model.

    Args:
        backbone: the model to guide.
        preset: weak / medium / strong / max (the official presets; medium is the paper's default).
        safety_concept: S.
    """

    def __init__(self, backbone: BackboneSpec, preset: str = "medium", safety_concept: str = SAFETY_CONCEPT, export_dir: str | None = None) -> None:
        guidance = SafetyGuidance.preset(preset, safety_concept)
        if not safety_concept.strip():
            raise IGMUError("SLD needs a non-empty safety_concept")
        super().__init__(backbone, [], lr=0.0, export_dir=export_dir)
        self.save_hyperparameters()
        self.automatic_optimization = False
        attach(self.backbone, guidance)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.trainer.should_stop = True  # nothing to train (no optimizer: global_step never moves)

    def configure_optimizers(self):
        return None
