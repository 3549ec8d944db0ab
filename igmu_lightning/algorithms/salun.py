"""SalUn, Saliency Unlearning (Fan et al., ICLR 2024), its text-to-image part.

1. Saliency mask, once before the first step, from forget batches (x_0, c_f) (one epoch by default):
       G = | sum over batches of grad MSE(eps, (1 + w) eps_th(x_t, c_f) - w eps_th(x_t, "")) |,  w = 7.5
   (|sum g|, not sum |g|); m = 1 on the global top ``mask_ratio`` of G over every trained tensor.
2. Unlearning, with every gradient multiplied by m before each optimizer step:
       L = || eps_th(x_t, c_f) - sg eps_th(x_t, c_pseudo) ||^2 + alpha L_DM(x_0 retain, c_retain)
   Both forget predictions share x_t, t and eps; the pseudo target comes from the trained model
   itself under no_grad. c_pseudo is a fixed prompt (NSFW: "a photo of a person wearing clothes") or
   the forget prompt with its concept words replaced (objects: class k -> (k + 1) % 10).
x_t comes from ``BackboneModule.noised`` (random draws: VAE posterior sample, eps, t)."""

from __future__ import annotations

import itertools
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.text import replace_words


class SalUn(UnlearningModule):
    """Args:
    backbone: the model to unlearn from; batches come from a forget/retain data module.
    pseudo_prompt: c_pseudo for every forget image (the NSFW recipe), or
    pseudo_words: words of the forget prompts replaced to make c_pseudo, e.g. {"church": "french horn"}
        or {"hollow": ""} (removed). Give exactly one of the two.
    alpha: weight of the retain diffusion loss (objects 0.5, NSFW 0.1).
    mask_ratio: share of trained entries that may change (0.5).
    mask_guidance: w of the saliency loss (7.5).
    mask_batches: forget batches per device the mask is summed over (default: one epoch of the loader).
    trainable: what is trained and masked (the full UNet).
    lr: Adam learning rate (None: 1e-5, the official).
    optimizer, lr_scheduler: replace the official Adam / the constant lr (``utils.optim``: then leave lr unset).
    """

    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.Adam, {"lr": 1e-5}  # docs/parity.md, SalUn: optimizer

    def __init__(
        self,
        backbone: BackboneSpec,
        pseudo_prompt: str | None = None,
        pseudo_words: dict[str, str] | None = None,
        alpha: float = 0.5,
        mask_ratio: float = 0.5,
        mask_guidance: float = 7.5,
        mask_batches: int | None = None,
        trainable: list[str] | None = None,
        lr: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if (pseudo_prompt is None) == (not pseudo_words):
            raise IGMUError(
                "SalUn needs exactly one of pseudo_prompt (a fixed prompt) or pseudo_words ({word: replacement})"
            )
        if not 0 < mask_ratio <= 1:
            raise IGMUError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
        if mask_batches is not None and mask_batches < 1:
            raise IGMUError(f"mask_batches must be >= 1 (or null for one epoch), got {mask_batches}")
        super().__init__(backbone, trainable or ["unet"], lr, export_dir, optimizer, lr_scheduler)
        self.save_hyperparameters()
        self.pseudo_prompt, self.pseudo_words = pseudo_prompt, dict(pseudo_words or {})
        self.alpha, self.mask_ratio, self.w, self.mask_batches = alpha, mask_ratio, mask_guidance, mask_batches
        self.mask: dict[str, torch.Tensor] | None = None  # parameter name -> bool, same shape

    # --- the losses --------------------------------------------------------------------------
    def eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.backbone.unet(x_t, t, encoder_hidden_states=self.backbone.encode_prompts(prompts)).sample.float()

    def saliency_loss(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x_t, t, noise = self.noised(images)
        guided = (1 + self.w) * self.eps(x_t, t, prompts) - self.w * self.eps(x_t, t, [""] * len(prompts))
        return F.mse_loss(guided, noise.float())

    def forget_loss(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x_t, t, _ = self.noised(images)
        with torch.no_grad():
            target = self.eps(x_t, t, self.pseudo_prompts(prompts))
        return F.mse_loss(self.eps(x_t, t, prompts), target)

    def retain_loss(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x_t, t, noise = self.noised(images)
        return F.mse_loss(self.eps(x_t, t, prompts), noise.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        forget, retain = batch["forget"], batch.get("retain")
        loss = forget_loss = self.forget_loss(forget["image"], forget["prompt"])
        if self.alpha:
            if retain is None:
                raise IGMUError("SalUn with alpha > 0 needs retain images: give the data module a retain set")
            retain_loss = self.retain_loss(retain["image"], retain["prompt"])
            loss = forget_loss + self.alpha * retain_loss
            self.log("train/retain_loss", retain_loss, batch_size=len(retain["prompt"]))
        self.log("train/forget_loss", forget_loss, batch_size=len(forget["prompt"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(forget["prompt"]))
        return loss

    def pseudo_prompts(self, prompts: list[str]) -> list[str]:
        if self.pseudo_prompt is not None:
            return [self.pseudo_prompt] * len(prompts)
        out = [replace_words(prompt, self.pseudo_words) for prompt in prompts]
        for prompt, text in zip(prompts, out):
            if text == " ".join(prompt.split()):
                raise IGMUError(f"forget prompt '{prompt}' contains none of the pseudo_words {list(self.pseudo_words)}: "
                                "caption the forget images with the concept word, or give pseudo_prompt")  # fmt: skip
        return out

    # --- the saliency mask -------------------------------------------------------------------
    def compute_mask(self, batches) -> dict[str, torch.Tensor]:
        """Top ``mask_ratio`` of |sum of saliency gradients| over ``batches`` (summed over ranks)."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        for batch in batches:
            forget = batch["forget"]
            with self._trainer.precision_plugin.train_step_context() if self._trainer else nullcontext():
                loss = self.saliency_loss(forget["image"].to(self.device), forget["prompt"])
            for g, grad in zip(total.values(), torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
                if grad is not None:
                    g.add_(grad)
        if self._trainer is not None:
            total = {n: self.trainer.strategy.reduce(g, reduce_op="sum") for n, g in total.items()}
        return top_fraction({n: g.abs_() for n, g in total.items()}, self.mask_ratio)

    def on_train_start(self) -> None:
        if self.mask is None:  # a resumed run restored its mask in on_load_checkpoint
            loader, start = self.trainer.train_dataloader, time.perf_counter()
            n = self.mask_batches or len(loader)
            self.mask = self.compute_mask(itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), n))
            kept, total = sum(int(m.sum()) for m in self.mask.values()), sum(m.numel() for m in self.mask.values())
            rank_zero_info(f"SalUn mask: {kept} of {total} entries trainable, from {n} forget batches "
                           f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
        self.mask = {n: m.to(self.device) for n, m in self.mask.items()}
        self._masked = [(p, self.mask[n]) for n, p in self.named_parameters() if p.requires_grad]

    def on_before_optimizer_step(self, optimizer) -> None:
        for param, keep in self._masked:  # after AMP unscaling, once per (accumulated) step
            if param.grad is not None:
                param.grad.mul_(keep)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.mask is not None:
            checkpoint["salun_mask"] = {n: pack_bits(m.cpu()) for n, m in self.mask.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        packed = checkpoint.get("salun_mask")
        if packed is None:
            return
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        if set(packed) != set(params):
            raise IGMUError(
                "the checkpoint's SalUn mask covers other tensors than this run trains: resume with its trainable"
            )
        self.mask = {n: unpack_bits(bits, params[n].shape) for n, bits in packed.items()}


def top_fraction(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Bool masks of exactly int(ratio * N) entries, the largest of all ``scores`` together."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int(ratio * flat.numel())
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        threshold = flat.kthvalue(flat.numel() - k + 1).values  # the k-th largest
        keep = flat > threshold
        ties = (flat == threshold).nonzero().flatten()[: k - int(keep.sum())]
        keep[ties] = True
    sizes = [s.numel() for s in scores.values()]
    return {n: m.view(s.shape) for (n, s), m in zip(scores.items(), keep.split(sizes))}


BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8, 8 entries a byte (a checkpoint holds 1/32 of the float mask)."""
    flat = F.pad(mask.flatten().to(torch.uint8), (0, -mask.numel() % 8))
    return (flat.view(-1, 8) * BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    flat = (bits[:, None] & BIT_WEIGHTS.to(bits.device)) != 0
    return flat.flatten()[: shape.numel()].view(shape)
