"""Concept Ablation, CA (Kumari et al., "Ablating Concepts in Text-to-Image Diffusion Models", ICCV 2023).

Fine-tune the model so that a target prompt predicts what its anchor prompt predicts:
    L = || eps_th(x_t, c*, t) - sg[eps_th(x_t, c, t)] ||^2_M  (+ w || eps_th(x'_t', c', t') - eps' ||^2)
with x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, t ~ U{0..999}, x0 an anchor image the frozen model made
from anchor prompt p (``AnchorData``'s ``anchor_sampler``: the diffusers code's DPM-Solver++ 25 steps,
CFG 6; for nudity the target is the negative prompt), c its embedding and c* that of the target prompt derived
from p. The anchor prediction comes from the same trainable UNet under no_grad, not from a frozen
copy (``loss: noise``, the official code's other ``loss_type_reverse``, uses the anchor image's own
noise eps instead). ||.||^2_M is the official masked reduction (``reduction: official``): per image,
the squared error summed over channels, height and width inside a (1, h, w) mask, divided by the
mask's sum, then the batch mean: 4x (SD's latent channels) the per-element mean, and the mask leaves
out a one-latent-pixel border even without the rescale augmentation (which we do not do).
``reduction: mean`` is the plain per-element mean. The optional prior term (``prior_weight``, 1 in
the official code) is the plain-mean diffusion loss on other anchor images with their own prompts.
Target prompts: ``object`` replaces the anchor word ("a red square" -> "a red triangle"); ``style``
fills one of ``style_templates`` drawn at random.

Where its images and prompts come from: the batch. Its data module is ``AnchorData``
(algorithms/anchors.py), which makes the anchor images with the frozen base model in
``prepare_data`` (cached under its ``anchor_dir``) and hands out batches of anchor images with their
anchor prompts; the module derives the target prompts from those. The prior term's images are drawn
in the step from the same anchor set (``AnchorData.draw_batch``), after the ablation images are
encoded, continuing the data module's random stream in the order this module always drew it."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError

STYLE_TEMPLATES = ("{p}, in the style of {t}", "in {t}'s style, {p}", "in {t}'s style, {p}")  # odds 1 : 2
NUDITY_TEMPLATES = ("{t}, {p}", "in {t} style, {p}", "{p}, {t}")  # the official nudity recipe, equal odds


class Prior(NamedTuple):
    """The prior term's batch: clean anchor latents, their prompts' embeddings, timesteps, noise."""

    latents: torch.Tensor
    context: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor


class ConceptAblation(UnlearningModule):
    """Args:
    backbone: the model to ablate from. The anchor prompts and images are the data's
        (``AnchorData``: prompts, images per prompt, sampler, negative prompt, flips, batch size).
    target: the concept to ablate ("triangle", "van gogh", "nudity"). In object mode the text that
        replaces the anchor word, where ``{}`` stands for the replaced word ("hollow {}": "a red
        square" -> "a hollow red square", for an anchor that captions leave unsaid).
    anchor: object mode: the anchor word (or words) each anchor prompt contains ("square").
    mode: ``object`` (replace the anchor word) or ``style`` (fill ``style_templates``).
    style_templates: templates with ``{p}`` (anchor prompt) and ``{t}`` (target), one drawn per item.
    prior_weight: weight of the prior term; 0 leaves it out (no extra UNet batch).
    trainable: presets or regexes: ``xattn_kv`` (the official "cross-attn"), ``attn`` (nudity), ``unet``
        ("full-weight"), ``embedding`` (the official "embedding" group: only the target words' rows
        of the token-embedding table learn; target and prior prompts are encoded with gradients).
    loss: ``model`` (the default "model-based" target, the anchor prompt's prediction) or ``noise``.
    reduction: ``official`` (masked: summed over the latent inside the border mask / mask sum) or ``mean``.
    lr: the effective AdamW learning rate (None: 1.6e-5). The official ``--scale_lr`` multiplies its CLI
        value by batch size x GPUs (x gradient accumulation, x2 with the prior term): 2e-6 x 4 x 2 = 1.6e-5.
    weight_decay: AdamW weight decay (None: 1e-2). Clip gradients at 1 with the trainer's gradient_clip_val.
    optimizer, lr_scheduler: replace the official AdamW / the constant lr (``utils.optim``: then leave lr
        and weight_decay unset).
    """

    # docs/parity.md, Concept Ablation: optimizer (AdamW, betas 0.9/0.999, eps 1e-8: torch's defaults)
    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.AdamW, {"lr": 1.6e-5, "weight_decay": 1e-2}

    def __init__(
        self,
        backbone: BackboneSpec,
        target: str,
        anchor: str | list[str] | None = None,
        mode: Literal["object", "style"] = "object",
        style_templates: list[str] | None = None,
        prior_weight: float = 0.0,
        trainable: list[str] | None = None,
        loss: Literal["model", "noise"] = "model",
        reduction: Literal["official", "mean"] = "official",
        lr: float | None = None,
        weight_decay: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not target.strip():
            raise IGMUError("ConceptAblation needs a non-empty target concept")
        if mode not in ("object", "style"):
            raise IGMUError(f"unknown ConceptAblation mode '{mode}': choose object or style")
        if loss not in ("model", "noise"):
            raise IGMUError(f"unknown ConceptAblation loss '{loss}': choose model (the official default) or noise")
        if reduction not in ("official", "mean"):
            raise IGMUError(f"unknown ConceptAblation reduction '{reduction}': choose official or mean")
        if prior_weight < 0:
            raise IGMUError(f"prior_weight must be >= 0, got {prior_weight}")
        super().__init__(backbone, trainable or ["xattn_kv"], lr, export_dir, optimizer, lr_scheduler, weight_decay)
        self.save_hyperparameters()
        self.target, self.mode = target.strip(), mode
        self.anchor_words = [anchor] if isinstance(anchor, str) else list(anchor or [])
        self.style_templates = list(style_templates or STYLE_TEMPLATES)
        self.prior_weight, self.loss, self.reduction = prior_weight, loss, reduction
        self.trains_text = any(name.startswith("backbone.text_encoder.") for name in self.trainable_names)
        if mode == "object" and not [w for w in self.anchor_words if w.strip()]:
            raise IGMUError("object mode replaces the anchor word: set anchor (e.g. anchor: square)")
        for template in self.style_templates:
            if mode == "style" and ("{p}" not in template or "{t}" not in template):
                raise IGMUError(f"style template '{template}' needs both {{p}} (anchor prompt) and {{t}} (target)")
        self._rng: torch.Generator | None = None
        self._latents: dict[tuple[int, bool], torch.Tensor] = {}

    def check_anchor_prompts(self, prompts: list[str]) -> None:
        """Every anchor prompt must yield a target prompt (``AnchorData`` asks before it generates)."""
        for prompt in prompts:
            self.target_prompt(prompt)

    def target_prompt(self, prompt: str, template: int = 0) -> str:
        """The target prompt of an anchor prompt; ``template`` picks the style template."""
        if self.mode == "style":
            return self.style_templates[template % len(self.style_templates)].format(p=prompt, t=self.target)
        words = "|".join(re.escape(w) for w in sorted(self.anchor_words, key=len, reverse=True))
        fill = lambda m: self.target.replace("{}", m.group(1))
        new, count = re.subn(rf"(?<!\w)({words})(?!\w)", fill, prompt, flags=re.IGNORECASE)
        if not count:
            raise IGMUError(f"anchor prompt '{prompt}' lacks the anchor word {self.anchor_words}: add it or drop it")
        return new

    # --- the loss ------------------------------------------------------------------------------
    def ablation_loss(self, latents, c_anchor, c_target, t, noise, prior: Prior | None = None):
        """(total, ablation term, prior term or None) for clean anchor latents at timesteps t."""
        unet, q = self.backbone.unet, self.backbone.noise_scheduler.add_noise
        x_t = q(latents, noise, t)
        if self.loss == "noise":
            anchor_eps = noise
        else:
            with torch.no_grad():  # the same trainable UNet, as a stop-gradient target
                anchor_eps = unet(x_t, t, encoder_hidden_states=c_anchor).sample
        x, times, context = x_t, t, c_target
        if prior is not None:  # one UNet call for both terms
            x, times = torch.cat([x_t, q(prior.latents, prior.noise, prior.t)]), torch.cat([t, prior.t])
            context = torch.cat([c_target, prior.context])
        pred = unet(x, times, encoder_hidden_states=context).sample.float()
        ablation = self.masked_mse(pred[: len(x_t)], anchor_eps.float())
        if prior is None:
            return ablation, ablation, None
        prior_loss = F.mse_loss(pred[len(x_t) :], prior.noise.float())
        return ablation + self.prior_weight * prior_loss, ablation, prior_loss

    def masked_mse(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ablation term's reduction: the official masked one (see the module docstring) or the mean."""
        if self.reduction == "mean":
            return F.mse_loss(pred, target)
        mask = border_mask(pred.shape[-2:], pred.device)
        return ((pred - target) ** 2 * mask).sum((1, 2, 3)).div(mask.sum()).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        n, prompts = len(batch["prompt"]), list(batch["prompt"])  # anchor images and their prompts
        latents = self.anchor_latents(batch)
        picks = torch.randint(len(self.style_templates), (n,), generator=self._rng).tolist()
        targets = [self.target_prompt(p, k) for p, k in zip(prompts, picks)]
        prior, encode = None, self.backbone.encode_prompts
        with torch.no_grad():
            c_anchor, c_target = encode(prompts + targets).chunk(2)
        with torch.set_grad_enabled(self.trains_text):  # the embedding group trains through the text encoder
            if self.trains_text:
                c_target = encode(targets)
            if self.prior_weight > 0:
                other = self.trainer.datamodule.draw_batch(n)  # more anchors, from the same stream
                prior_latents = self.anchor_latents(other)
                prior = Prior(prior_latents, encode(list(other["prompt"])), *self.noise_for(prior_latents))
        loss, ablation, prior_loss = self.ablation_loss(latents, c_anchor, c_target, *self.noise_for(latents), prior)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/ablation_loss", ablation, batch_size=n)
        if prior_loss is not None:
            self.log("train/prior_loss", prior_loss, batch_size=n)
        return loss

    def configure_optimizers(self):
        params = self.trainable_parameters()
        table = self._embedding_table()
        groups = [{"params": [p for p in params if p is not table]}]
        if table is not None:
            # Only the target words' rows get gradients (the official code zeroes the rest). Its AdamW
            # decay still shrank every other token's row; ours exempts the table, so they stay exact.
            if getattr(self, "_rows_hook", None) is not None:  # a second fit: one hook is enough
                self._rows_hook.remove()
            rows = self._target_rows(table)  # built once, on the table's device, not on every backward
            self._rows_hook = table.register_hook(lambda grad: grad * rows)
            groups.append({"params": [table], "weight_decay": 0.0})
        return self.optimization([g for g in groups if g["params"]])

    def _embedding_table(self) -> torch.nn.Parameter | None:
        table = self.backbone.text_encoder.get_input_embeddings().weight
        return table if table.requires_grad else None

    def _target_rows(self, table: torch.Tensor) -> torch.Tensor:
        """(vocabulary, 1) mask of the target words' tokens."""
        words = self.target.replace("{}", " ")
        ids = self.backbone.tokenizer(words, add_special_tokens=False).input_ids
        mask = torch.zeros(len(table), 1, dtype=table.dtype, device=table.device)
        mask[ids] = 1
        return mask

    # --- anchor images -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        data = self.trainer.datamodule
        if getattr(data, "generator", None) is None or not hasattr(data, "draw_batch"):
            raise IGMUError("ConceptAblation trains on anchor images: give it data: class_path: igmu_lightning.algorithms.AnchorData")
        self._rng = data.generator  # the data module's stream: its loader drew this batch's anchors
        self._latents = {}

    def resume_state(self) -> dict:
        """The latents of the anchors encoded so far (each was sampled from the VAE posterior once:
        encoding again would differ). The generator's state is the loader's, in the same checkpoint."""
        keys = list(self._latents)
        return {"latent_keys": [[i, int(flip)] for i, flip in keys], "latents": [self._latents[k].cpu() for k in keys]}

    def load_resume_state(self, state: dict) -> None:
        if "latent_keys" in state:
            keys = [(int(i), bool(flip)) for i, flip in state["latent_keys"]]
            self._latents = {k: t.to(self.device) for k, t in zip(keys, state["latents"])}

    def anchor_latents(self, batch: dict) -> torch.Tensor:
        """Clean latents of a batch of anchor images: each (image, flip) is encoded once, the first
        time it is drawn (one VAE call for the batch's new ones, with the anchor generator), then kept."""
        keys = list(zip(batch["index"].tolist(), batch["flip"].tolist()))
        rows = {}
        for row, key in enumerate(keys):
            if key not in self._latents:
                rows.setdefault(key, row)
        if rows:
            images = batch["image"][list(rows.values())]
            with torch.no_grad():
                self._latents.update(zip(rows, self.backbone.encode_images(images.to(self.device), self._rng)))
        return torch.stack([self._latents[k] for k in keys])

    def noise_for(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps t ~ U{0..T-1} and Gaussian noise for a batch of latents."""
        steps = self.backbone.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (len(latents),), generator=self._rng)
        return t.to(latents.device), torch.randn(latents.shape, generator=self._rng).to(latents)


def border_mask(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(1, 1, h, w): 1 inside, 0 on the one-latent-pixel border, as the official mask of an image
    that was not rescaled (its ``mask[top // f + 1 : (top + scale) // f - 1, ...] = 1``)."""
    mask = torch.zeros(1, 1, *size, device=device)
    mask[..., 1:-1, 1:-1] = 1
    return mask
