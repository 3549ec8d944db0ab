"""Plain text-to-image diffusion training (the DDPM loss): fine-tuning a model on captioned
images, or pretraining the embedded world's model from scratch."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.modules.base import BackboneModule


class TextToImage(BackboneModule):
    """L_DM = || eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, c, t) ||^2 with t ~ U{0..999}.

    Args:
        backbone: the model to train.
        trainable: what to train; ``["unet", "text_encoder"]`` to pretrain both from scratch.
        lr: AdamW learning rate (peak, after warmup).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup steps.
        lr_schedule: ``constant`` after warmup, or ``cosine`` decay to zero at ``max_steps``.
        caption_dropout: share of captions replaced by "" so that classifier-free guidance works.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        trainable: list[str] | None = None,
        lr: float = 1e-5,
        weight_decay: float = 1e-2,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        caption_dropout: float = 0.1,
        export_dir: str | None = None,
    ) -> None:
        super().__init__(backbone, trainable if trainable is not None else ["unet"], export_dir)
        self.save_hyperparameters()
        self.lr, self.weight_decay = lr, weight_decay
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

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None

        def factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            if self.lr_schedule == "cosine" and total:
                progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
                return 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
