"""Relearning: how few fine-tuning steps on images of the erased concept bring it back.

A COPY of the unlearned model (never the model itself) is fine-tuned with the plain diffusion loss
on the concept's images and captions, the UNet's cross-attention or all of the UNet, with Adam; the
copy is handed out after each of the requested step counts (0, 10, 50, 100), so the evaluation
judges the target rate along the way (``evaluation.relearning_probe``). There is no official code
to follow: this reconstructs the fine-tuning attack of the relearning literature (docs/parity.md,
"Relearning"). It changes the model, not the prompts, so ``run`` refuses: use the model-level probe."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator

import torch

from igmu_lightning.attacks.base import Attack, AttackContext, AttackResult, preset_settings
from igmu_lightning.attacks.concept_images import diffusion_loss, load_concept_images, world_concept_images
from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.world.concepts import TARGETS

TRAINABLE = {"xattn": r"\.attn2\.", "unet": r""}  # names inside the UNet: cross-attention, or all of it
PRESETS = {
    # SD scale: a usual SD fine-tuning step size and batch
    "sd": {"lr": 1e-5, "batch_size": 4, "n_images": 25},
    # the embedded world on CPUs: its tiny UNet needs a larger step to move in 100 steps
    "quick": {"lr": 1e-4, "batch_size": 16, "n_images": 64},
}


class Relearning(Attack):
    """Fine-tune a copy of the model on the concept's images, checkpoint by checkpoint.

    Args:
        images: the concept's images, a folder of files or a tensor (N, 3, H, W) in [0, 1] (None:
            the renders of ``world_target``, with their world captions).
        captions: one caption per image (default: ``prompt`` filled with the concept word).
        world_target: the world target whose renders are the images when ``images`` is None.
        prompt: the caption of every image when ``captions`` is None, ``{}`` the concept word.
        concept: the concept word for ``prompt`` (default: the world target's word).
        checkpoints: the step counts after which the copy is judged (0: the model as given).
        trainable: "xattn" (the UNet's cross-attention) or "unet" (every UNet weight).
        preset: "sd" (Adam lr 1e-5, batch 4) or "quick" (the world's: lr 1e-4, batch 16);
            ``lr``, ``batch_size``, ``n_images`` override it.
    """

    name = "relearning"

    def __init__(
        self,
        images: str | torch.Tensor | None = None,
        captions: list[str] | None = None,
        world_target: str | None = None,
        prompt: str = "a photo of a {}",
        concept: str | None = None,
        checkpoints: tuple[int, ...] = (0, 10, 50, 100),
        trainable: str = "xattn",
        preset: str = "sd",
        lr: float | None = None,
        batch_size: int | None = None,
        n_images: int | None = None,
    ) -> None:
        settings = preset_settings("relearning", PRESETS, preset, lr=lr, batch_size=batch_size, n_images=n_images)
        if trainable not in TRAINABLE:
            raise IGMUError(f"relearning trainable '{trainable}' is unknown: choose one of {', '.join(TRAINABLE)}")
        if images is None and world_target not in TARGETS:
            raise IGMUError(f"relearning needs images of the concept: give images or world_target ({', '.join(TARGETS)})")
        ks = sorted({int(k) for k in checkpoints})
        if not ks or ks[0] < 0:
            raise IGMUError(f"relearning checkpoints must be step counts >= 0, got {list(checkpoints)}")
        if settings["batch_size"] < 1 or settings["n_images"] < 1 or settings["lr"] <= 0:
            raise IGMUError("relearning lr, batch_size and n_images must be > 0")
        self.images, self.captions, self.world_target = images, captions, world_target
        self.prompt, self.concept, self.checkpoints, self.trainable = prompt, concept, tuple(ks), trainable
        self.preset, self.lr, self.batch_size, self.n_images = preset, settings["lr"], settings["batch_size"], settings["n_images"]

    def training_data(self, model: Backbone, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
        """(images at the model's size, one caption each)."""
        if self.images is None:
            return world_concept_images(self.world_target, self.n_images, model.image_size, seed)[:2]
        images = load_concept_images(self.images, model.image_size, self.n_images)
        if self.captions:
            if len(self.captions) < len(images):
                raise IGMUError(f"{len(images)} concept images but {len(self.captions)} captions: give one caption per image")
            return images, list(self.captions)[: len(images)]
        concept = self.concept or (TARGETS[self.world_target].word if self.world_target in TARGETS else None)
        if not concept:
            raise IGMUError("relearning needs captions or the concept word (concept) to fill its prompt")
        return images, [self.prompt.format(concept)] * len(images)

    def parameters_of(self, model: Backbone) -> list[torch.nn.Parameter]:
        pattern = re.compile(TRAINABLE[self.trainable])
        params = [p for name, p in model.unet.named_parameters() if pattern.search(name)]
        if not params:
            raise IGMUError(f"relearning trainable '{self.trainable}' matches no UNet weight of this model")
        return params

    def relearn(self, model: Backbone, seed: int = 0) -> Iterator[tuple[int, Backbone]]:
        """(k, the relearned copy after k steps) for each checkpoint, in order. The copy is one
        object trained on between checkpoints: use it before asking for the next. ``model`` itself
        is never changed."""
        images, captions = self.training_data(model, seed)
        relearned = copy.deepcopy(model).eval()
        relearned.requires_grad_(False)
        params = self.parameters_of(relearned)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=self.lr)
        g = torch.Generator().manual_seed(int(seed))
        done = 0
        self.losses: list[float] = []
        for k in self.checkpoints:
            while done < k:
                self.losses.append(self.step(relearned, optimizer, images, captions, g))
                done += 1
            yield k, relearned

    def step(self, model: Backbone, optimizer: torch.optim.Optimizer, images: torch.Tensor, captions: list[str], g: torch.Generator) -> float:
        """One step: ``batch_size`` images drawn with replacement, L_DM on them, one Adam update."""
        pick = torch.randint(len(images), (self.batch_size,), generator=g)
        with torch.no_grad():
            cond = model.encode_prompts([captions[i] for i in pick.tolist()])
        loss = diffusion_loss(model, images[pick], cond, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def run(self, context: AttackContext) -> AttackResult:
        raise IGMUError("relearning changes the model, not the prompts: report it with "
                        "igmu_lightning.evaluation.relearning_probe.RelearningProbe, not as a prompt attack")  # fmt: skip

    def to_config(self) -> dict:
        config = super().to_config()
        args = config["init_args"]
        args.pop("losses", None)
        if isinstance(args.get("images"), torch.Tensor):
            args["images"] = f"tensor {tuple(args['images'].shape)}"
        return config
