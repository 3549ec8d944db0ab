"""Concept Ablation, CA (Kumari et al., "Ablating Concepts in Text-to-Image Diffusion Models", ICCV 2023).

Fine-tune the model so that a target prompt predicts what its anchor prompt predicts:
    L = || eps_th(x_t, c*, t) - sg[eps_th(x_t, c, t)] ||^2_M  (+ w || eps_th(x'_t', c', t') - eps' ||^2)
with x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, t ~ U{0..999}, x0 an anchor image the frozen model made
from anchor prompt p (``anchor_sampler``: the diffusers code's DPM-Solver++ 25 steps, CFG 6; for
nudity the target is the negative prompt), c its embedding and c* that of the target prompt derived
from p. The anchor prediction comes from the same trainable UNet under no_grad, not from a frozen
copy (``loss: noise``, the official code's other ``loss_type_reverse``, uses the anchor image's own
noise eps instead). ||.||^2_M is the official masked reduction (``reduction: official``): per image,
the squared error summed over channels, height and width inside a (1, h, w) mask, divided by the
mask's sum, then the batch mean: 4x (SD's latent channels) the per-element mean, and the mask leaves
out a one-latent-pixel border even without the rescale augmentation (which we do not do).
``reduction: mean`` is the plain per-element mean. The optional prior term (``prior_weight``, 1 in
the official code) is the plain-mean diffusion loss on other anchor images with their own prompts.
Target prompts: ``object`` replaces the anchor word ("a red square" -> "a red triangle"); ``style``
fills one of ``style_templates`` drawn at random. Anchor images are cached as PNGs keyed by (base
model, sampler settings, prompt, seed) under ``anchor_dir``, with ``manifest.json`` written last: a
rerun generates nothing, a changed prompt list or base model generates only what is missing."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from tqdm.auto import tqdm

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.artifacts import ImageCache, fingerprint
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.data.captioned_folder import load_image
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import SamplerSettings
from igmu_lightning.utils.io import atomic_write_json
from igmu_lightning.utils.text import read_texts

# How the anchor images are made: the official diffusers code (DPMSolverMultistep, 25 steps, CFG 6;
# its eta is ignored by that scheduler), the official compvis code (DDIM 200 steps, eta 1, CFG 6),
# and the DDIM 25-step eta-1 setting this project used before (a mix of the two).
ANCHOR_SAMPLERS = {
    "diffusers": SamplerSettings(steps=25, guidance_scale=6.0, scheduler="dpm++"),
    "compvis": SamplerSettings(steps=200, guidance_scale=6.0, scheduler="ddim", eta=1.0),
    "ddim25": SamplerSettings(steps=25, guidance_scale=6.0, scheduler="ddim", eta=1.0),
}
STYLE_TEMPLATES = ("{p}, in the style of {t}", "in {t}'s style, {p}", "in {t}'s style, {p}")  # odds 1 : 2
NUDITY_TEMPLATES = ("{t}, {p}", "in {t} style, {p}", "{p}, {t}")  # the official nudity recipe, equal odds
MANIFEST = "manifest.json"


class Prior(NamedTuple):
    """The prior term's batch: clean anchor latents, their prompts' embeddings, timesteps, noise."""

    latents: torch.Tensor
    context: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor


class ConceptAblation(UnlearningModule):
    """Args:
    backbone: the model to ablate from.
    target: the concept to ablate ("triangle", "van gogh", "nudity"). In object mode the text that
        replaces the anchor word, where ``{}`` stands for the replaced word ("hollow {}": "a red
        square" -> "a hollow red square", for an anchor that captions leave unsaid).
    anchor_prompts: prompts of the anchor concept; the anchor images are made from them.
    anchor_prompts_file: more anchor prompts, one a line (the official recipes read theirs from the
        official repository's ``assets/finetune_prompts/``); read when fit starts.
    anchor: object mode: the anchor word (or words) each anchor prompt contains ("square").
    mode: ``object`` (replace the anchor word) or ``style`` (fill ``style_templates``).
    style_templates: templates with ``{p}`` (anchor prompt) and ``{t}`` (target), one drawn per item.
    images_per_prompt: anchor images per prompt (the paper: 1000 images over 200 prompts).
    anchor_dir: where the anchor PNGs and their manifest are kept.
    anchor_sampler: ``diffusers`` (official diffusers code), ``compvis`` (official compvis code) or
        ``ddim25`` (DDIM 25 steps, eta 1: neither; this project's earlier setting).
    negative_prompt: for the anchor images (nudity: the target, so that anchors are clothed).
    prior_weight: weight of the prior term; 0 leaves it out (no extra UNet batch).
    hflip: flip anchor images at random (the official style and object recipes).
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
    generation_batch_size: images per sampler call while making the anchors.
    """

    # docs/parity.md, Concept Ablation: optimizer (AdamW, betas 0.9/0.999, eps 1e-8: torch's defaults)
    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.AdamW, {"lr": 1.6e-5, "weight_decay": 1e-2}

    def __init__(
        self,
        backbone: BackboneSpec,
        target: str,
        anchor_prompts: list[str] | None = None,
        anchor_prompts_file: str | None = None,
        anchor: str | list[str] | None = None,
        mode: Literal["object", "style"] = "object",
        style_templates: list[str] | None = None,
        images_per_prompt: int = 5,
        anchor_dir: str = "outputs/anchors/concept_ablation",
        anchor_sampler: Literal["diffusers", "compvis", "ddim25"] = "diffusers",
        negative_prompt: str = "",
        prior_weight: float = 0.0,
        hflip: bool = False,
        trainable: list[str] | None = None,
        loss: Literal["model", "noise"] = "model",
        reduction: Literal["official", "mean"] = "official",
        lr: float | None = None,
        weight_decay: float | None = None,
        generation_batch_size: int = 16,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        prompts = [p.strip() for p in anchor_prompts or [] if p and p.strip()]
        if not prompts and not anchor_prompts_file:
            raise IGMUError("ConceptAblation has no anchor prompts: give anchor_prompts or anchor_prompts_file")
        if not target.strip():
            raise IGMUError("ConceptAblation needs a non-empty target concept")
        if mode not in ("object", "style"):
            raise IGMUError(f"unknown ConceptAblation mode '{mode}': choose object or style")
        if loss not in ("model", "noise"):
            raise IGMUError(f"unknown ConceptAblation loss '{loss}': choose model (the official default) or noise")
        if reduction not in ("official", "mean"):
            raise IGMUError(f"unknown ConceptAblation reduction '{reduction}': choose official or mean")
        if anchor_sampler not in ANCHOR_SAMPLERS:
            raise IGMUError(f"unknown anchor_sampler '{anchor_sampler}': choose one of {', '.join(ANCHOR_SAMPLERS)}")
        if images_per_prompt < 1 or generation_batch_size < 1 or prior_weight < 0:
            raise IGMUError("images_per_prompt and generation_batch_size must be >= 1 and prior_weight >= 0")
        super().__init__(backbone, trainable or ["xattn_kv"], lr, export_dir, optimizer, lr_scheduler, weight_decay)
        self.save_hyperparameters()
        self.target, self.mode, self.anchor_prompts = target.strip(), mode, prompts
        self.anchor_words = [anchor] if isinstance(anchor, str) else list(anchor or [])
        self.style_templates = list(style_templates or STYLE_TEMPLATES)
        self.images_per_prompt, self.anchor_dir, self.hflip = images_per_prompt, Path(anchor_dir), hflip
        self.prior_weight, self.loss, self.reduction = prior_weight, loss, reduction
        self.anchor_prompts_file = anchor_prompts_file
        self._file_read = not anchor_prompts_file  # the file's prompts join the list once, at setup
        self.trains_text = any(name.startswith("backbone.text_encoder.") for name in self.trainable_names)
        self.generation_batch_size = generation_batch_size
        self.sampling = replace(ANCHOR_SAMPLERS[anchor_sampler], negative_prompt=negative_prompt)
        if mode == "object" and not [w for w in self.anchor_words if w.strip()]:
            raise IGMUError("object mode replaces the anchor word: set anchor (e.g. anchor: square)")
        for template in self.style_templates:
            if mode == "style" and ("{p}" not in template or "{t}" not in template):
                raise IGMUError(f"style template '{template}' needs both {{p}} (anchor prompt) and {{t}} (target)")
        self.check_prompts(prompts)
        self.generated = 0  # anchor images this process generated at the last fit start

    def check_prompts(self, prompts: list[str]) -> None:
        for prompt in prompts:
            self.target_prompt(prompt)  # every anchor prompt must yield a target prompt

    def load_anchor_prompts(self) -> None:
        """Add the prompts of ``anchor_prompts_file`` (once), checked like the listed ones."""
        if not self._file_read:
            extra = read_texts(self.anchor_prompts_file)
            self.check_prompts(extra)
            self.anchor_prompts = list(dict.fromkeys(self.anchor_prompts + extra))
            self._file_read = True

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
        n = len(batch["prompt"])  # the data module sets batch size and steps; its texts are unused
        latents, prompts = self.draw(n)
        picks = torch.randint(len(self.style_templates), (n,), generator=self._rng).tolist()
        targets = [self.target_prompt(p, k) for p, k in zip(prompts, picks)]
        prior, encode = None, self.backbone.encode_prompts
        with torch.no_grad():
            c_anchor, c_target = encode(prompts + targets).chunk(2)
        with torch.set_grad_enabled(self.trains_text):  # the embedding group trains through the text encoder
            if self.trains_text:
                c_target = encode(targets)
            if self.prior_weight > 0:
                prior_latents, prior_prompts = self.draw(n)
                prior = Prior(prior_latents, encode(prior_prompts), *self.noise_for(prior_latents))
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
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.load_anchor_prompts()  # a missing prompt file stops the run before any model work

    def on_fit_start(self) -> None:
        super().on_fit_start()
        rank = self.global_rank if self._trainer is not None else 0
        self._rng = torch.Generator().manual_seed((torch.initial_seed() + 1_000_003 * rank) % 2**63)
        self.generated = self.prepare_anchors()
        self._latents: dict[tuple[int, bool], torch.Tensor] = {}

    def resume_state(self) -> dict:
        """The anchor draws' generator and the latents of the anchors encoded so far (each was
        sampled from the VAE posterior once, with that generator: encoding again would differ)."""
        if getattr(self, "_rng", None) is None:
            return {}
        keys = list(getattr(self, "_latents", {}))
        return {
            "rng": self._rng.get_state(), "latent_keys": [[i, int(flip)] for i, flip in keys],
            "latents": [self._latents[k].cpu() for k in keys],
        }  # fmt: skip

    def load_resume_state(self, state: dict) -> None:
        if "rng" in state:
            self._rng.set_state(state["rng"])
            keys = [(int(i), bool(flip)) for i, flip in state["latent_keys"]]
            self._latents = {k: t.to(self.device) for k, t in zip(keys, state["latents"])}

    def anchor_items(self) -> list[tuple[str, int]]:
        """(prompt, seed) of every anchor image; seeds follow from the prompt's text, so another
        prompt list keeps the images of the prompts it shares."""
        items = []
        for prompt in self.anchor_prompts:
            first = int(hashlib.sha256(prompt.encode()).hexdigest()[:7], 16)
            items += [(prompt, first + j) for j in range(self.images_per_prompt)]
        return items

    def prepare_anchors(self) -> int:
        """Generate the missing anchor images with the frozen model (every rank a share; a
        barrier around it) and write the manifest last; returns how many this process made."""
        self.load_anchor_prompts()
        trainer = self._trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        barrier = trainer.strategy.barrier if trainer is not None else (lambda name=None: None)
        cache, settings = ImageCache(self.anchor_dir), asdict(self.sampling)
        folder = cache.folder(fingerprint(self.base_hashes(), self.backbone.guidance), settings)
        self.anchor_files = [(folder / f"{cache.key(p, s)}.png", p) for p, s in self.anchor_items()]
        todo = [(p, s) for (path, _), (p, s) in zip(self.anchor_files, self.anchor_items()) if not path.is_file()]
        barrier("ca_anchors_listed")  # every rank has its list before anyone writes
        mine, size = todo[rank::world], self.generation_batch_size
        sampler = self.teacher_sampler(self.sampling)
        show = rank == 0 and bool(mine) and (trainer is None or trainer.progress_bar_callback is not None)
        for start in tqdm(range(0, len(mine), size), desc="CA anchor images", disable=not show, unit="batch"):
            chunk = mine[start : start + size]
            images = sampler.sample_batch([p for p, _ in chunk], [s for _, s in chunk], pad_to=size)
            for (prompt, seed), image in zip(chunk, images):
                cache.save(folder, prompt, seed, image)
        barrier("ca_anchors_made")
        if rank == 0:
            self.write_manifest(settings)
        barrier("ca_anchors_recorded")
        return len(mine)

    def write_manifest(self, settings: dict) -> None:
        missing = [str(path) for path, _ in self.anchor_files if not path.is_file()]
        if missing:
            raise IGMUError(f"anchor image '{missing[0]}' (+{len(missing) - 1}) missing: share anchor_dir across ranks")
        manifest = {
            "base_hashes": self.base_hashes(),
            "sampler": settings,
            "prompts": self.anchor_prompts,
            "images_per_prompt": self.images_per_prompt,
            "images": [
                {"file": str(path.relative_to(self.anchor_dir)), "prompt": p, "seed": s}
                for (path, _), (p, s) in zip(self.anchor_files, self.anchor_items())
            ],
        }
        path = self.anchor_dir / MANIFEST
        if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != manifest:
            atomic_write_json(path, manifest)

    def draw(self, n: int) -> tuple[torch.Tensor, list[str]]:
        """n random anchor images as clean latents (each encoded once, then kept) and their prompts."""
        picks = torch.randint(len(self.anchor_files), (n,), generator=self._rng).tolist()
        flips = (torch.rand(n, generator=self._rng) < 0.5).tolist() if self.hflip else [False] * n
        keys = list(zip(picks, flips))
        new = [k for k in dict.fromkeys(keys) if k not in self._latents]
        if new:  # one VAE call for the images not seen yet
            images = [load_image(self.anchor_files[i][0]) for i, _ in new]
            images = torch.stack([im.flip(-1) if flip else im for im, (_, flip) in zip(images, new)])
            with torch.no_grad():
                self._latents.update(zip(new, self.backbone.encode_images(images.to(self.device), self._rng)))
        return torch.stack([self._latents[k] for k in keys]), [self.anchor_files[i][1] for i in picks]

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
