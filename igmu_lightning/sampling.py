"""The one batched sampler every part of the project generates images with.

Classifier-free guidance runs the unconditional and conditional halves in one UNet call. Each
image has its own seed: its starting noise and any scheduler noise come from its own generator,
and image k regenerated alone from its record equals image k of the batch, bit for bit. CPU and
GPU kernels round differently for different batch sizes (never for other images' contents), so
every batch runs at one padded size, which the record keeps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from igmu_lightning.backbone.backbone import Backbone
from igmu_lightning.errors import IGMUError

SchedulerName = Literal["ddim", "ddpm", "pndm", "lms", "euler", "euler_a", "dpm++"]
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}


@dataclass(frozen=True)
class SamplerSettings:
    """Everything besides prompt and seed that decides an image; part of every image record."""

    steps: int = 25
    guidance_scale: float = 7.5
    scheduler: SchedulerName = "ddim"
    eta: float = 0.0
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise IGMUError(f"sampler steps must be >= 1, got {self.steps}")
        if self.scheduler not in SCHEDULERS:
            raise IGMUError(f"unknown scheduler '{self.scheduler}': choose one of {', '.join(SCHEDULERS)}")


@dataclass
class ImageRecord:
    """How one image was made: enough to regenerate it alone."""

    prompt: str
    seed: int
    settings: dict = field(default_factory=dict)
    batch: int = 1  # the padded batch size it was made in


@dataclass
class Samples:
    images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1], on the CPU
    records: list[ImageRecord]


class Sampler:
    """Batched text-to-image sampling with classifier-free guidance on a ``Backbone``.

    Args:
        backbone: the model to sample from (its UNet, text encoder and VAE).
        settings: steps, guidance scale, scheduler, eta, resolution, negative prompt.
        batch_size: images per UNet call (the call itself holds 2x that for CFG).
        progress: show a progress bar over batches.
        unet: what predicts the noise, ``unet(latents, t, encoder_hidden_states=...)`` returning
            ``.sample`` (default: the backbone's UNet; unlearning modules pass their frozen teacher).
        encode: prompts to embeddings (default: the backbone's ``encode_prompts``; unlearning
            modules pass their teacher's text encoder).
        compile: ``torch.compile`` the UNet in place (its state-dict keys stay the same). It pays
            on long runs: the first batch waits for the compilation (about 45 s for the world's
            model on 2 CPU cores), then each UNet call is faster (1.24x there).
    """

    def __init__(
        self,
        backbone: Backbone,
        settings: SamplerSettings | None = None,
        batch_size: int = 16,
        progress: bool = False,
        unet=None,
        compile: bool = False,
        encode=None,
    ) -> None:
        if batch_size < 1:
            raise IGMUError(f"sampler batch_size must be >= 1, got {batch_size}")
        self.backbone = backbone
        self.unet = unet or backbone.unet
        self.encode = encode or backbone.encode_prompts
        if compile and isinstance(self.unet, torch.nn.Module) and getattr(self.unet, "_compiled_call_impl", None) is None:
            self.unet.compile()  # in place: parameters and checkpoint keys are untouched
        self.guidance = getattr(backbone, "guidance", None)
        self.settings = settings or SamplerSettings()
        self.batch_size = batch_size
        self.progress = progress

    # --- pieces other modules reuse (ESD's partial sampling, SLD's guidance) -------------------
    def make_scheduler(self) -> SchedulerMixin:
        scheduler = SCHEDULERS[self.settings.scheduler].from_config(self.backbone.scheduler.config)
        scheduler.set_timesteps(self.settings.steps, device=self.backbone.device)
        return scheduler

    def latent_shape(self) -> tuple[int, int, int]:
        scale = self.backbone.vae_scale
        height = self.settings.height or self.backbone.image_size
        width = self.settings.width or self.backbone.image_size
        if height % scale or width % scale:
            raise IGMUError(f"height and width must be multiples of {scale}, got {height}x{width}")
        return (self.backbone.unet.config.in_channels, height // scale, width // scale)

    def initial_latents(self, generators: list[torch.Generator], scheduler: SchedulerMixin) -> torch.Tensor:
        """One standard-normal latent per image from its own CPU generator, so every device agrees."""
        noise = torch.stack([torch.randn(self.latent_shape(), generator=g) for g in generators])
        return noise.to(self.backbone.device, self.backbone.dtype) * scheduler.init_noise_sigma

    @staticmethod
    def generators(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

    def guided_noise(
        self, latents: torch.Tensor, t: torch.Tensor, step: int, cond: torch.Tensor, uncond: torch.Tensor
    ) -> torch.Tensor:
        """eps_u + g (eps_c - eps_u), with both halves in one UNet call (Ho & Salimans' CFG), or the
        backbone's own sampling-time guidance when it carries one (SLD)."""
        if self.guidance is not None:
            return self.guidance.noise(self, latents, t, step, cond, uncond)
        scale = self.settings.guidance_scale
        if scale == 1.0:
            return self.unet(latents, t, encoder_hidden_states=cond).sample
        both = self.unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond]))
        eps_uncond, eps_cond = both.sample.chunk(2)
        return eps_uncond + scale * (eps_cond - eps_uncond)

    def denoise(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        scheduler: SchedulerMixin,
        generators: list[torch.Generator],
        stop_after: int | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Run the reverse process from ``latents``, from the schedule's step ``start`` on;
        ``stop_after=k`` returns after k steps."""
        timesteps = scheduler.timesteps[start:] if stop_after is None else scheduler.timesteps[start : start + stop_after]
        extra = {"eta": self.settings.eta} if isinstance(scheduler, DDIMScheduler) else {}
        if isinstance(scheduler, (DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler)):
            extra["generator"] = generators
        for step, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            eps = self.guided_noise(model_input, t, step, cond, uncond)
            latents = scheduler.step(eps, t, latents, **extra).prev_sample
        return latents

    @torch.no_grad()
    def partial(
        self, cond: torch.Tensor, uncond: torch.Tensor, k: int, seeds: list[int], start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k guided steps from each seed's noise, from the schedule's step ``start`` (ESD's x_t):
        the latents and the timestep they sit at (past the last step: the last one, ~x_0)."""
        scheduler = self.make_scheduler()
        generators = self.generators(seeds)
        latents = self.initial_latents(generators, scheduler)
        latents = self.denoise(latents, cond, uncond, scheduler, generators, stop_after=k, start=start)
        return latents, scheduler.timesteps[min(start + k, len(scheduler.timesteps) - 1)].repeat(len(seeds))

    def text_pair(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) embeddings; the negative prompt fills the unconditional half.
        The backbone's guidance sees the prompts and may change both (SAFREE's projection)."""
        cond = self.encode(prompts)
        if self.guidance is not None:
            return self.guidance.prepare(self, prompts, cond, self.unconditional(cond))
        return cond, self.unconditional(cond)

    def unconditional(self, cond: torch.Tensor) -> torch.Tensor:
        """The negative prompt's embedding, shaped like ``cond``."""
        return self.encode([self.settings.negative_prompt]).expand_as(cond)

    def sample_embeddings(self, cond: torch.Tensor, seeds: list[int], uncond: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], on the model's device, from prompt embeddings (B, L, D),
        e.g. ``backbone.encode_embeddings`` of optimised token embeddings: gradients reach ``cond``
        unless called under no_grad. ``sample_batch`` runs this same code without gradients."""
        scheduler = self.make_scheduler()
        generators = self.generators(seeds)  # starting noise, then any scheduler noise, per image
        latents = self.initial_latents(generators, scheduler)
        uncond = self.unconditional(cond) if uncond is None else uncond
        latents = self.denoise(latents, cond, uncond, scheduler, generators)
        return self.backbone.decode_latents(latents)

    # --- the public entry points ------------------------------------------------------------
    @torch.inference_mode()
    def sample_batch(self, prompts: list[str], seeds: list[int], pad_to: int | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] for one batch, run padded to ``pad_to`` images (repeats
        of the last one) so that its numbers do not depend on how many images it holds."""
        n = len(prompts)
        if pad_to is not None and pad_to > n:
            prompts = list(prompts) + [prompts[-1]] * (pad_to - n)
            seeds = list(seeds) + [seeds[-1]] * (pad_to - n)
        cond, uncond = self.text_pair(prompts)
        return self.sample_embeddings(cond, seeds, uncond)[:n].cpu()

    def generate(self, prompts: list[str], seeds: list[int] | None = None, base_seed: int = 0) -> Samples:
        """Images for every prompt, in batches of ``batch_size``; seed i defaults to base_seed + i."""
        prompts = list(prompts)
        if not prompts:
            raise IGMUError("no prompts to generate from: the prompt list is empty")
        if seeds is None:
            seeds = [base_seed + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise IGMUError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
        chunks = []
        batch = min(self.batch_size, len(prompts))
        n_batches = math.ceil(len(prompts) / batch)
        for b in tqdm(range(n_batches), desc="generating", disable=not self.progress, unit="batch"):
            sl = slice(b * batch, (b + 1) * batch)
            chunks.append(self.sample_batch(prompts[sl], seeds[sl], pad_to=batch))
        settings = asdict(self.settings)
        records = [ImageRecord(p, int(s), settings, batch) for p, s in zip(prompts, seeds)]
        return Samples(torch.cat(chunks), records)

    def regenerate(self, record: ImageRecord) -> torch.Tensor:
        """Image (3, H, W) of one record, made alone; equals the one made in its batch."""
        if record.settings and record.settings != asdict(self.settings):
            raise IGMUError("this record was made with other sampler settings: build a Sampler with them")
        return self.sample_batch([record.prompt], [record.seed], pad_to=record.batch)[0]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to 0..255 bytes, rounding as PIL-saving pipelines do."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
