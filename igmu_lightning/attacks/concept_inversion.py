"""Concept inversion (Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image
Generative Models", ICLR 2024; official code github.com/NYU-DICE-Lab/circumventing-concept-erasure,
``esd/concept_inversion.py``, a textual-inversion script run against the erased model).

A new token (a placeholder such as ``<c*>``) gets one embedding, initialised from a given word and
learned with the plain diffusion loss on images of the erased concept, against the **unlearned**
model: the text encoder's other token embeddings and every weight of the model stay as they are.
Each attacked prompt then has its concept word replaced by the placeholder. The inversion is per
concept, not per prompt: one inversion per ``run``, then every prompt's conditioning is encoded
with the learned embedding (``AttackResult.embeddings``); the readable prompts carry the
placeholder. Settings against the official ones: docs/parity.md, "Concept inversion"."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from igmu_lightning.attacks.base import Attack, AttackContext, AttackResult, preset_settings
from igmu_lightning.attacks.concept_images import diffusion_loss, load_concept_images, world_concept_images
from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.text import replace_words
from igmu_lightning.world.concepts import TARGETS

# The official caption templates (esd/concept_inversion.py:419-447, 449-469), "{}" the placeholder.
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
)  # fmt: skip
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}",
    "a cropped painting in the style of {}", "the painting in the style of {}",
    "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}",
    "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a cropped painting in the style of {}",
    "a good painting in the style of {}", "a close-up painting in the style of {}",
    "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
)  # fmt: skip
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}

# official: esd/train.sh:12-15 (batch 4 x accumulation 4, 5000 steps, lr 5e-3 scaled by 4 * 4 * 1 GPU
# in concept_inversion.py:800-803), AdamW weight decay 1e-2 (:286), 25 training images (train.sh:21).
PRESETS = {
    "official": {"steps": 5000, "lr": 5e-3 * 16, "batch_size": 16, "n_images": 25},
    # the embedded world on 2 CPU cores: the same optimiser, fewer steps (docs/parity.md: its cost)
    "quick": {"steps": 200, "lr": 5e-3 * 16, "batch_size": 16, "n_images": 64},
}


@dataclass
class Inversion:
    """A learned placeholder: its string, the token id it has in ``tokenizer`` (a copy of the
    model's, with the placeholder added), its embedding, and the loss per step."""

    placeholder: str
    token_id: int
    initializer_id: int
    embedding: torch.Tensor  # (D,)
    tokenizer: object
    losses: list[float]


class ConceptInversion(Attack):
    """Textual inversion of the erased concept against the unlearned model.

    Args:
        images: the concept's images: a folder of image files or a tensor (N, 3, H, W) in [0, 1]
            (the official code uses 25 images of the concept made by the original SD; None: on
            the world, ``world_target``'s renders).
        captions: one caption per image with ``{}`` where the placeholder goes (the official I2P
            mode), instead of ``templates``.
        world_target: the world target whose renders are the images when ``images`` is None (their
            captions, with the concept word replaced by the placeholder, are the captions).
        templates: "object" or "style" (the official template lists) or a list with ``{}``.
        placeholder: the new token's text; it must not be a word of the tokenizer.
        initializer: a one-token word whose embedding starts the placeholder's (None: the concept
            word when it is one token, else "art" for style templates and "object" otherwise).
        words: the words each prompt's concept is named by, replaced by the placeholder (None:
            the context's ``concept``).
        preset: "official" (5000 steps of 16 images at lr 0.08) or "quick" (the world's, on CPUs);
            ``steps``, ``lr``, ``batch_size``, ``n_images`` override it.
        weight_decay, betas, eps: AdamW's, as official (1e-2, (0.9, 0.999), 1e-8).
        flip_p: random horizontal flip of the training images (official 0.5).
    """

    finds_embeddings = True

    name = "concept_inversion"

    def __init__(
        self,
        images: str | torch.Tensor | None = None,
        captions: list[str] | None = None,
        world_target: str | None = None,
        templates: str | list[str] = "object",
        placeholder: str = "<c*>",
        initializer: str | None = None,
        words: list[str] | None = None,
        preset: str = "official",
        steps: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        n_images: int | None = None,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        flip_p: float = 0.5,
    ) -> None:
        settings = preset_settings("concept inversion", PRESETS, preset, steps=steps, lr=lr, batch_size=batch_size, n_images=n_images)
        if images is None and world_target is None:
            raise IGMUError("concept inversion needs images of the concept: give images (a folder or tensor) or world_target")
        if isinstance(templates, str) and templates not in TEMPLATES:
            raise IGMUError(f"unknown templates '{templates}': choose one of {', '.join(TEMPLATES)} or give a list with {{}}")
        listed = list(captions or []) + ([] if isinstance(templates, str) else list(templates))
        for text in listed:
            if "{}" not in text:
                raise IGMUError(f"caption or template '{text}' has no {{}} where the placeholder goes")
        if settings["steps"] < 1 or settings["batch_size"] < 1 or settings["n_images"] < 1:
            raise IGMUError("concept inversion steps, batch_size and n_images must be >= 1")
        self.images, self.captions, self.world_target = images, captions, world_target
        self.templates, self.placeholder, self.initializer, self.words = templates, placeholder, initializer, words
        self.preset, self.steps, self.lr = preset, settings["steps"], settings["lr"]
        self.batch_size, self.n_images = settings["batch_size"], settings["n_images"]
        self.weight_decay, self.betas, self.eps, self.flip_p = weight_decay, tuple(betas), eps, flip_p
        self.last: Inversion | None = None  # the latest run's inversion

    # --- data -------------------------------------------------------------------------------
    def training_data(self, model: Backbone, concept_words: list[str], seed: int) -> tuple[torch.Tensor, list[str] | None]:
        """(images at the model's size, captions with ``{}`` or None for the templates)."""
        size = model.image_size
        if self.images is not None:
            images = load_concept_images(self.images, size, self.n_images)
            captions = list(self.captions)[: len(images)] if self.captions else None
            if captions is not None and len(captions) != len(images):
                raise IGMUError(f"{len(images)} concept images but {len(captions)} captions: give one caption per image")
            return images, captions
        images, captions, word = world_concept_images(self.world_target, self.n_images, size, seed)
        swap = {w: "{}" for w in (concept_words or [word])}
        return images, [replace_words(c, swap) for c in captions]

    def _template_list(self) -> tuple[str, ...]:
        return TEMPLATES[self.templates] if isinstance(self.templates, str) else tuple(self.templates)

    # --- the inversion ----------------------------------------------------------------------
    def invert(self, model: Backbone, images: torch.Tensor, captions: list[str] | None, concept_words: list[str], seed: int = 0) -> Inversion:
        """Learn the placeholder's embedding on ``images`` against ``model`` (unchanged)."""
        tokenizer = copy.deepcopy(model.tokenizer)
        if len(model.tokenizer.encode(self.placeholder, add_special_tokens=False)) == 1 or tokenizer.add_tokens([self.placeholder]) != 1:
            raise IGMUError(f"placeholder '{self.placeholder}' is already a token of the tokenizer: choose another, e.g. '<c*>'")
        token_id = tokenizer.convert_tokens_to_ids(self.placeholder)
        init_word = self.initializer or self._default_initializer(model, concept_words)
        init_ids = model.tokenizer.encode(init_word, add_special_tokens=False)
        if len(init_ids) != 1:
            raise IGMUError(f"initializer '{init_word}' is {len(init_ids)} tokens: give a word that is a single token")
        table = model.text_encoder.get_input_embeddings().weight
        embedding = torch.nn.Parameter(table[init_ids[0]].detach().float().clone())
        optimizer = torch.optim.AdamW([embedding], lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, eps=self.eps)
        g = torch.Generator().manual_seed(int(seed))
        templates = self._template_list()
        device = model.device
        images = images.to(device)
        losses = []
        for _ in range(self.steps):
            pick = torch.randint(len(images), (self.batch_size,), generator=g)
            batch = images[pick.to(device)]
            flip = (torch.rand(self.batch_size, generator=g) < self.flip_p).to(device)
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            if captions is not None:
                texts = [captions[i].format(self.placeholder) for i in pick.tolist()]
            else:
                texts = [templates[i].format(self.placeholder) for i in torch.randint(len(templates), (self.batch_size,), generator=g).tolist()]
            cond = self.encode(model, texts, Inversion(self.placeholder, token_id, init_ids[0], embedding, tokenizer, []))
            loss = diffusion_loss(model, batch, cond, g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return Inversion(self.placeholder, token_id, init_ids[0], embedding.detach().clone(), tokenizer, losses)

    def _default_initializer(self, model: Backbone, concept_words: list[str]) -> str:
        for word in concept_words:
            if len(model.tokenizer.encode(word, add_special_tokens=False)) == 1:
                return word
        return "art" if self.templates == "style" else "object"

    @staticmethod
    def encode(model: Backbone, texts: list[str], inversion: Inversion) -> torch.Tensor:
        """The conditioning (B, 77, D) of ``texts``, the placeholder's rows given its embedding
        (with gradients to it); every other token is looked up in the model's own table."""
        limit = model.tokenizer.model_max_length
        ids = inversion.tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids
        ids = ids.to(model.device)
        at = ids == inversion.token_id
        known = torch.where(at, torch.full_like(ids, inversion.initializer_id), ids)  # in range of the model's table
        embeds = model.token_embeddings(known)
        embeds = torch.where(at[..., None], inversion.embedding.to(embeds.dtype), embeds)
        return model.encode_embeddings(embeds, known)

    # --- the attack -------------------------------------------------------------------------
    def concept_words(self, context: AttackContext) -> list[str]:
        words = list(self.words) if self.words else ([context.concept] if context.concept else [])
        if not words and self.world_target:
            words = [TARGETS[self.world_target].word] if self.world_target in TARGETS else []
        if not words:
            raise IGMUError("concept inversion needs the concept's word to replace in the prompts: set words or the context's concept")
        return words

    def run(self, context: AttackContext) -> AttackResult:
        start = time.perf_counter()
        model = context.model
        words = self.concept_words(context)
        images, captions = self.training_data(model, words, context.seed)
        was_training = model.training
        model.eval()
        try:
            inversion = self.invert(model, images, captions, words, context.seed)
            swap = dict.fromkeys(words, self.placeholder)
            prompts = [replace_words(p, swap) for p in context.prompts]
            with torch.no_grad():
                embeddings = self.encode(model, prompts, inversion)
        finally:
            model.train(was_training)
        self.last = inversion
        final = sum(inversion.losses[-10:]) / len(inversion.losses[-10:])
        details = [{"placeholder_used": self.placeholder in p, "steps": self.steps, "final_loss": final} for p in prompts]
        return AttackResult(prompts, details, embeddings, time.perf_counter() - start)

    def to_config(self) -> dict:
        config = super().to_config()
        args = config["init_args"]
        args.pop("last", None)
        if isinstance(args.get("images"), torch.Tensor):
            args["images"] = f"tensor {tuple(args['images'].shape)}"
        elif args.get("images") is not None:
            args["images"] = str(Path(args["images"]))
        return config
