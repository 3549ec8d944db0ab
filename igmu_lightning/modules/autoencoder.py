"""Training the VAE of a latent diffusion model (the first stage of pretraining the world's
model): reconstruction MSE plus a small KL term, then the latent scaling factor measured so that
scaled latents have unit variance, as SD's 0.18215 does for its VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.modules.base import BackboneModule


class AutoencoderTraining(BackboneModule):
    """L = ||D(z) - x||^2 + kl_weight * KL(q(z|x) || N(0, I)), z ~ q(z|x).

    Args:
        backbone: the model whose VAE is trained (only the VAE is unfrozen).
        lr: Adam learning rate (None: 1e-3).
        kl_weight: weight of the KL term (SD's VAE used 1e-6).
        scale_batches: batches used at the end of fit to measure the latent scaling factor.
        optimizer, lr_scheduler: replace Adam / the constant lr (``utils.optim``: then leave lr unset).
    """

    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.Adam, {"lr": 1e-3}

    def __init__(
        self,
        backbone: BackboneSpec,
        lr: float | None = None,
        kl_weight: float = 1e-6,
        scale_batches: int = 8,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(backbone, ["^vae\\."], export_dir, optimizer, lr_scheduler, {"lr": lr})
        self.save_hyperparameters()
        self.kl_weight, self.scale_batches = kl_weight, scale_batches

    def losses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.backbone.vae
        posterior = vae.encode(images * 2 - 1).latent_dist
        reconstruction = (vae.decode(posterior.sample()).sample + 1) / 2
        return F.mse_loss(reconstruction, images), posterior.kl().mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.backbone.vae.train()
        mse, kl = self.losses(batch["image"])
        self.log_dict({"train/mse": mse, "train/kl": kl}, prog_bar=True, batch_size=len(batch["image"]))
        return mse + self.kl_weight * kl

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        mse, _ = self.losses(batch["image"])
        self.log("val/mse", mse, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    @torch.no_grad()
    def measure_scaling_factor(self) -> float:
        """1 / std of the unscaled latents over a few training batches."""
        vae = self.backbone.vae.eval()
        latents = []
        for i, batch in enumerate(self.trainer.datamodule.train_dataloader()):
            if i >= self.scale_batches:
                break
            latents.append(vae.encode(batch["image"].to(self.device) * 2 - 1).latent_dist.sample())
        return float(1.0 / torch.cat(latents).std())

    def on_train_end(self) -> None:
        factor = self.measure_scaling_factor()
        self.backbone.vae.register_to_config(scaling_factor=factor)
        print(f"VAE latent scaling factor: {factor:.5f}")
        super().on_train_end()
