"""ESD, Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

Fine-tune eps_theta so that, for the concept c, it predicts the frozen model's negatively guided
noise:  L = || eps_theta(x_t, c, t) - [eps*(x_t, 0, t) - eta (eps*(x_t, c, t) - eps*(x_t, 0, t))] ||^2
where x_t comes from running k of ``ddim_steps`` DDIM steps (CFG ``start_guidance`` on c) from
noise, k ~ U{0..ddim_steps-1}, and t is the timestep that latent sits at (the next one to denoise:
the paper-era code queried ~2 DDIM steps off; we do not copy that). The three loss predictions use
no guidance. Variants: ESD-x trains cross-attention (``xattn``), ESD-u the rest (``noxattn``)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import SamplerSettings

VARIANTS = {"x": ["xattn"], "u": ["noxattn"], "full": ["unet"], "x-strict": ["xattn_kv"]}


class ESD(UnlearningModule):
    """Args:
    backbone: the model to erase from.
    concept: the text of the concept (the official code's ``prompt``), e.g. "nudity".
    erase_from: optional c_f; the student sees c_f and the base term uses eps*(x_t, c_f).
    variant: x / u / full / x-strict (attn2 to_k, to_v only).
    negative_guidance: eta (paper-era code 1.0; the 2025 code 2.0).
    start_guidance: CFG scale while sampling x_t (3 in both codes).
    ddim_steps: DDIM steps of the partial sampling (50).
    sample_with: which model samples x_t: ``frozen`` (2025 code) or ``trained`` (paper-era code).
    lr: Adam learning rate (paper-era 1e-5, 2025 5e-5).
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        concept: str,
        erase_from: str | None = None,
        variant: Literal["x", "u", "full", "x-strict"] = "x",
        negative_guidance: float = 1.0,
        start_guidance: float = 3.0,
        ddim_steps: int = 50,
        sample_with: Literal["frozen", "trained"] = "frozen",
        lr: float = 1e-5,
        export_dir: str | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise IGMUError(f"unknown ESD variant '{variant}': choose one of {', '.join(VARIANTS)}")
        if not concept.strip():
            raise IGMUError("ESD needs a non-empty concept to erase")
        super().__init__(backbone, VARIANTS[variant], lr, export_dir)
        self.save_hyperparameters()
        self.concept, self.erase_from = concept, erase_from
        self.eta, self.ddim_steps, self.sample_with = negative_guidance, ddim_steps, sample_with
        self.sampling = SamplerSettings(steps=ddim_steps, guidance_scale=start_guidance)

    def esd_target(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, base: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """eps*(x_t, base) - eta (eps*(x_t, c) - eps*(x_t, null)), all from the frozen teacher."""
        e_null = self.teacher(x_t, t, null).sample
        e_c = self.teacher(x_t, t, c).sample
        e_base = e_null if base is null else self.teacher(x_t, t, base).sample
        return e_base - self.eta * (e_c - e_null)

    def sample_xt(self, c: torch.Tensor, null: torch.Tensor, k: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run k DDIM steps with guidance from noise; return x_t and its timestep."""
        sampler = self.teacher_sampler(self.sampling)
        if self.sample_with == "trained":
            sampler.unet = self.backbone.unet
        scheduler = sampler.make_scheduler()
        seeds = torch.randint(0, 2**31 - 1, (batch,)).tolist()  # from the seeded global RNG
        generators = sampler.generators(seeds)
        with torch.no_grad():
            latents = sampler.initial_latents(generators, scheduler)
            latents = sampler.denoise(latents, c, null, scheduler, generators, stop_after=k)
        t = scheduler.timesteps[k].repeat(batch)
        return latents, t

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        n = len(batch["prompt"])
        with torch.no_grad():
            c = self.backbone.encode_prompts([self.concept] * n)
            null = self.backbone.encode_prompts([""] * n)
            base = self.backbone.encode_prompts([self.erase_from] * n) if self.erase_from else null
        k = int(torch.randint(0, self.ddim_steps, ()))
        x_t, t = self.sample_xt(c, null, k, n)
        target = self.esd_target(x_t, t, c, base, null)
        student_context = base if self.erase_from else c
        prediction = self.backbone.unet(x_t, t, encoder_hidden_states=student_context).sample
        loss = F.mse_loss(prediction.float(), target.float())
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss
