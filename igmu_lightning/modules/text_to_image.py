"""Plain text-to-image diffusion training (the DDPM loss): fine-tuning a model on captioned
images, or pretraining the embedded world's model from scratch."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.base import BackboneModule
from igmu_lightning.utils.optim import SCHEDULES, warmup_schedule


class TextToImage(BackboneModule):
    """L_DM = || eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, c, t) ||^2 with t ~ U{0..999}.

    Args:
        backbone: the model to train.
        trainable: what to train; ``["unet", "text_encoder"]`` to pretrain both from scratch.
        lr: AdamW learning rate (peak, after warmup; None: 1e-5).
        weight_decay: AdamW weight decay (None: 1e-2).
        warmup_steps: linear warmup steps, from lr 0 at the first step (diffusers' ``get_scheduler``).
        lr_schedule: after warmup, diffusers' ``constant`` (held), ``cosine`` (to zero at ``max_steps``),
            ``linear``, ``cosine_with_restarts`` or ``polynomial``.
        caption_dropout: share of captions replaced by "" so that classifier-free guidance works.
        optimizer: replaces AdamW; lr and weight_decay are then set in its init_args (``utils.optim``).
        lr_scheduler: replaces the warmup_steps / lr_schedule pair (leave those at 0 / constant).
    """

    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.AdamW, {"lr": 1e-5, "weight_decay": 1e-2}

    def __init__(
        self,
        backbone: BackboneSpec,
        trainable: list[str] | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine", "cosine_with_restarts", "polynomial"] = "constant",
        caption_dropout: float = 0.1,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if lr_schedule not in SCHEDULES:
            raise IGMUError(f"unknown lr_schedule '{lr_schedule}': choose one of {', '.join(SCHEDULES)}")
        if lr_scheduler is not None and (warmup_steps or lr_schedule != "constant"):
            raise IGMUError("TextToImage sets both lr_scheduler and warmup_steps / lr_schedule: "
                            "keep one (warmup_steps 0 and lr_schedule constant with an lr_scheduler)")  # fmt: skip
        super().__init__(backbone, trainable if trainable is not None else ["unet"], export_dir,
                         optimizer, lr_scheduler, {"lr": lr, "weight_decay": weight_decay})  # fmt: skip
        self.save_hyperparameters()
        self.warmup_steps, self.lr_schedule = warmup_steps, lr_schedule
        self.caption_dropout = caption_dropout

    def diffusion_loss(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        bb = self.backbone
        with torch.no_grad():
            latents = bb.encode_images(images)
        if self.training and self.caption_dropout > 0:
            drop = torch.rand(len(prompts)).tolist()
            prompts = ["" if d < self.caption_dropout else p for p, d in zip(prompts, drop)]
        context = bb.encode_prompts(prompts)
        noise = torch.randn_like(latents)
        t = torch.randint(0, bb.noise_scheduler.config.num_train_timesteps, (len(latents),), device=latents.device)
        noisy = bb.noise_scheduler.add_noise(latents, noise, t)
        return F.mse_loss(bb.unet(noisy, t, encoder_hidden_states=context).sample.float(), noise.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch["image"], batch["prompt"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["prompt"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.diffusion_loss(batch["image"], batch["prompt"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["prompt"]))

    def default_lr_scheduler(self, optimizer: torch.optim.Optimizer):
        total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else None
        return warmup_schedule(optimizer, self.lr_schedule, self.warmup_steps, total)
