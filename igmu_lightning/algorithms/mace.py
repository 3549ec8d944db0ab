"""MACE, Mass Concept Erasure in Diffusion Models (Lu et al., CVPR 2024; github.com/Shilin-LU/MACE:
training.py, src/cfr_lora_training.py, src/cfr_utils.py, src/fuse_lora_close_form.py).

Three stages on every cross-attention key and value projection W (attn2.to_k / to_v):
1. Closed-form refinement (CFR, at fit start). For each concept c with mapping m and each template T,
   the tokens T(c) and T(m) share (common prefix, common suffix with EOS, and the padding after it,
   aligned from the end) give keys k (from T(c)) and targets W0 k' (the same token of T(m)):
       W = (lam W0 + sum W0 k' k^T + s^2 (C1 + w_d D1)) (lam I + sum k k^T + s^2 (C2 + w_d D2))^-1
   C, D: prior and domain preservation caches (sum (W0 e) e^T and sum e e^T over e.g. COCO captions).
2. One rank-1 LoRA per concept on to_k / to_v, trained concept after concept (the training steps),
   on images of the concept with the mask of its object, t ~ f(t) = sig(0.05(t-200)) - sig(0.05(t-400)):
       L = sum over attn2 layers l of || A_l[pixels inside the mask, concept positions] ||_F
   (A_l: softmax attention of the prompt, a random template holding the concept; the positions are
   the concept's tokens and, by ``pooler``, <|endoftext|> tokens, as FMN: see ``fmn.pooler_positions``).
3. Fusion (at train end): the same closed form from W_CFR, targets (W_CFR + dW_i) e over all 77
   tokens of concept i's prompts, caches scaled by s_fuse. The LoRAs are then removed: the model is
   the plain fused weights (export: a diffusers folder and the delta of every to_k / to_v)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.algorithms.fmn import POOLERS, attention_probes, pooler_positions, word_positions
from igmu_lightning.algorithms.uce import closed_form
from igmu_lightning.backbone import Backbone, BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.adapters import LoRA, tuner_layers
from igmu_lightning.utils.text import expand_braces

# The official augmentation templates (src/cfr_utils.py:257-343); the configs' prompt_len 30 keeps the first 30.
OBJECT_TEMPLATES = (
    "{} in a photo", "{} in a snapshot", "A snapshot of {}", "A photograph showcasing {}", "An illustration of {}",
    "A digital rendering of {}", "A visual representation of {}", "A graphic of {}", "A shot of {}", "A photo of {}",
    "A black and white image of {}", "A depiction in portrait form of {}", "A scene depicting {} during a public gathering",
    "{} captured in an image", "A depiction created with oil paints capturing {}", "An image of {}",
    "A drawing capturing the essence of {}", "An official photograph featuring {}", "A detailed sketch of {}",
    "{} during sunset/sunrise", "{} in a detailed portrait", "An official photo of {}", "Historic photo of {}",
    "Detailed portrait of {}", "A painting of {}", "HD picture of {}", "Magazine cover capturing {}",
    "Painting-like image of {}", "Hand-drawn art of {}", "An oil portrait of {}",
)  # fmt: skip
STYLE_TEMPLATES = (
    "An artwork by {}", "Art piece by {}", "A recent creation by {}", "{}'s renowned art", "Latest masterpiece by {}",
    "A stunning image by {}", "An art in {}'s style", "Exhibition artwork of {}", "Art display by {}",
    "a beautiful painting by {}", "An image inspired by {}'s style", "A sketch by {}", "Art piece representing {}",
    "A drawing by {}", "Artistry showcasing {}", "An illustration by {}", "A digital art by {}", "A visual art by {}",
    "A reproduction inspired by {}'s colorful, expressive style", "Famous painting of {}", "A famous art by {}",
    "Artistic style of {}", "{}'s famous piece", "Abstract work of {}", "{}'s famous drawing",
    "Art from {}'s early period", "A portrait by {}", "An imitation reflecting the style of {}",
    "An painting from {}'s collection", "Vibrant reproduction of artwork by {}",
)  # fmt: skip
TARGETS = r".*\.attn2\.(to_k|to_v)"


def importance_weights(num_timesteps: int, temperature: float = 0.05) -> torch.Tensor:
    """The official relation-focal sampling density over t = 0..T-1 (src/cfr_utils.py:207-209), normalised."""
    t = torch.arange(num_timesteps, dtype=torch.float64)
    f = torch.sigmoid(temperature * (t - 200)) - torch.sigmoid(temperature * (t - 400))
    return f / f.sum()


def shared_positions(old: list[int], new: list[int], length: int) -> tuple[list[int], list[int]]:
    """Token positions of ``old`` and ``new`` (ids with BOS and EOS, unpadded) that carry the same
    tokens: the common prefix, the common suffix (EOS included) and the padding up to ``length``,
    aligned from the end; the official ``find_matching_indices`` plus its padding extension
    (src/cfr_utils.py:10-30, 105-112)."""
    prefix = 0
    while prefix < min(len(old), len(new)) and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(old), len(new)) - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    shift = len(old) - len(new)
    tail = [o for o in range(len(old) - suffix, length) if 0 <= o - shift < length]
    return list(range(prefix)) + tail, list(range(prefix)) + [o - shift for o in tail]


def masked_attention_norm(probs: list[torch.Tensor], positions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sum over layers of || A_l[b, :, pixels where masks[b] > 0.5, positions[b]] ||_F; each A_l is
    (B, heads, pixels, L) of a square map, masks (B, 1, H, W) resized to it by nearest neighbour."""
    total = 0.0
    for p in probs:
        side = math.isqrt(p.shape[2])
        if side * side != p.shape[2]:
            raise IGMUError(f"MACE's mask needs square attention maps, got {p.shape[2]} pixels")
        inside = F.interpolate(masks.float(), size=(side, side), mode="nearest").flatten(1) > 0.5  # (B, pixels)
        pick = inside[:, None, :, None] & positions[:, None, None, :]
        total = total + p.masked_select(pick.expand_as(p)).norm()
    return total


class MACE(UnlearningModule):
    """Args:
    backbone: the model to erase from; batches come from a concept-image data module
        (``data.WorldConceptImages``, ``data.FolderConceptImages``), one concept after the other.
    concepts: the words or phrases to erase, e.g. ["triangle", "striped"].
    mapping: what each concept maps to in the refinement (one, or one per concept; "" allowed).
    concept_types: ``object`` (the official: the loss sees the pixels inside the mask, object
        templates) or ``style`` (whole images, style templates); one, or one per concept.
    templates: texts with "{}" where the concept goes ("{a,b}" alternatives expand): one list for
        every concept, or one list per concept; None: the official 30 templates of each concept's type.
    lam: weight of the current weights in both closed forms (1e3: the official object config; the
        official nudity and art configs' 0 leaves the solve to the caches' invertibility).
    train_preserve_scale, fuse_preserve_scale: s of the caches in refinement (applied squared, as
        the official code does) and fusion. preserve_weight: w_d, the domain cache's weight.
    prior_cache, domain_cache: official cache files ({i}_for_mat1 / _for_mat2, i over to_v of every
        attn2 layer then to_k); prior_prompts: texts whose cache is computed instead of a prior file.
    rank: LoRA rank (1). pooler: <|endoftext|> tokens marked besides the concept's (``all``: the
        official use_pooler on SD v1.x, EOS and every padding token; ``eos``; ``none``).
    importance_sampling: t from the official density (True) or uniform.
    lr, weight_decay: AdamW (None: 1e-5 and 0.01, the official object config).
    """

    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.AdamW, {"lr": 1e-5, "weight_decay": 0.01}

    def __init__(
        self,
        backbone: BackboneSpec,
        concepts: list[str],
        mapping: list[str],
        concept_types: list[Literal["object", "style"]] | None = None,
        templates: list[str] | list[list[str]] | None = None,
        lam: float = 1e3,
        train_preserve_scale: float = 0.0,
        fuse_preserve_scale: float = 0.0,
        preserve_weight: float = 0.0,
        prior_cache: str | None = None,
        domain_cache: str | None = None,
        prior_prompts: list[str] | None = None,
        rank: int = 1,
        pooler: Literal["all", "eos", "none"] = "all",
        importance_sampling: bool = True,
        lr: float | None = None,
        weight_decay: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        concepts, types = list(concepts), list(concept_types or ["object"])
        if not concepts or not all(c.strip() for c in concepts):
            raise IGMUError("MACE needs at least one non-empty concept to erase")
        if len(mapping) not in (1, len(concepts)) or len(types) not in (1, len(concepts)):
            raise IGMUError(
                f"{len(concepts)} concepts, {len(mapping)} mappings and {len(types)} concept_types: give one, or one per concept"
            )
        if not set(types) <= {"object", "style"}:
            raise IGMUError(f"MACE concept_types are object or style, got {types}")
        if pooler not in POOLERS:
            raise IGMUError(f"unknown MACE pooler '{pooler}': choose one of {', '.join(POOLERS)}")
        if prior_cache and prior_prompts:
            raise IGMUError("give MACE a prior_cache file or prior_prompts, not both")
        self.concepts, self.rank = concepts, rank  # attach_adapters (in the base's __init__) reads them
        super().__init__(backbone, ["lora"], lr, export_dir, optimizer, lr_scheduler, weight_decay)
        self.save_hyperparameters()
        self.mapping = list(mapping) * (len(concepts) // len(mapping))
        self.types = types * (len(concepts) // len(types))
        self.templates, self.lam, self.pooler, self.importance_sampling = templates, lam, pooler, importance_sampling
        self.s_train, self.s_fuse, self.w_domain = train_preserve_scale, fuse_preserve_scale, preserve_weight
        self.prior_cache, self.domain_cache, self.prior_prompts = prior_cache, domain_cache, prior_prompts
        self.refined = False
        self.prompts = [self.concept_prompts(i) for i in range(len(concepts))]

    def attach_adapters(self, backbone: Backbone) -> None:
        for i in range(len(self.concepts)):  # diffusers' LoRALinearLayer init: A ~ N(0, 1/rank^2), B = 0
            backbone.attach(LoRA(targets=TARGETS, rank=self.rank, name=f"mace_{i}", init="gaussian"))

    # --- texts and projections ---------------------------------------------------------------
    def concept_prompts(self, i: int) -> list[tuple[str, str]]:
        """(prompt with concept i, the same prompt with its mapping) for every template."""
        templates = self.templates or (OBJECT_TEMPLATES if self.types[i] == "object" else STYLE_TEMPLATES)
        if self.templates and not isinstance(self.templates[0], str):  # one list per concept
            if len(self.templates) != len(self.concepts):
                raise IGMUError(
                    f"{len(self.templates)} template lists for {len(self.concepts)} concepts: give one list, or one per concept"
                )
            templates = self.templates[i]
        texts = [t for template in templates for t in expand_braces(template)]
        if not all("{}" in t for t in texts):
            raise IGMUError(
                f"every MACE template needs a '{{}}' where the concept goes, e.g. 'a photo of {{}}': got {texts}"
            )
        fill = lambda text, word: " ".join(text.replace("{}", word).split())  # noqa: E731
        return [(fill(t, self.concepts[i]), fill(t, self.mapping[i])) for t in texts]

    def projections(self) -> list[tuple[str, torch.nn.Linear]]:
        """(name, base Linear) of to_v of every attn2 layer, then to_k: the official order
        (src/cfr_utils.py:33-56), which cache files index."""
        layers = [(n, m) for n, m in self.backbone.unet.named_modules() if n.endswith("attn2")]
        out = []
        for proj in ("to_v", "to_k"):
            for name, attn in layers:
                linear = getattr(attn, proj)
                out.append((f"{name}.{proj}", linear.get_base_layer() if hasattr(linear, "get_base_layer") else linear))
        return out

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """All 77 token embeddings of each text, float64 (N, 77, D)."""
        return self.backbone.text_encoder(self.backbone.tokenize(texts))[0].double()

    def cfr_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, K'): keys (tokens of the concept prompts outside the concept) and the same tokens of
        the mapping prompts, row by row, over every concept and template."""
        tok, length = self.backbone.tokenizer, self.backbone.tokenizer.model_max_length
        keys, targets = [], []
        for pairs in self.prompts:
            old_texts, new_texts = [p[0] for p in pairs], [p[1] for p in pairs]
            old_emb, new_emb = self.embed(old_texts), self.embed(new_texts)
            for j, (old, new) in enumerate(pairs):
                ids_old, ids_new = tok(old).input_ids, tok(new).input_ids
                if max(len(ids_old), len(ids_new)) > length:
                    raise IGMUError(
                        f"MACE prompt '{old}' or '{new}' is longer than {length} tokens: shorten the template"
                    )
                po, pn = shared_positions(ids_old, ids_new, length)
                keys.append(old_emb[j, po])
                targets.append(new_emb[j, pn])
        return torch.cat(keys), torch.cat(targets)

    def caches(self, projections) -> list[tuple[torch.Tensor | float, torch.Tensor | float]]:
        """Per projection: (C1 + w_d D1, C2 + w_d D2) of the prior and domain caches (0 without)."""

        def load(path):
            try:
                cache = torch.load(path, map_location=self.device, weights_only=True)
            except (OSError, RuntimeError) as err:
                raise IGMUError(f"MACE cache '{path}' cannot be read: {str(err).splitlines()[0]}") from None
            missing = [k for i in range(len(projections)) for k in (f"{i}_for_mat1", f"{i}_for_mat2") if k not in cache]
            if missing:
                raise IGMUError(
                    f"MACE cache '{path}' lacks {missing[0]}: it is not a cache of this model's {len(projections)} projections"
                )
            return [(cache[f"{i}_for_mat1"].double(), cache[f"{i}_for_mat2"].double()) for i in range(len(projections))]

        if self.prior_prompts:
            e = self.embed([t for p in self.prior_prompts for t in expand_braces(p)]).flatten(0, 1)
            ee = e.T @ e
            prior = [(lin.weight.double() @ ee, ee) for _, lin in projections]
        else:
            prior = load(self.prior_cache) if self.prior_cache else [(0.0, 0.0)] * len(projections)
        domain = load(self.domain_cache) if self.domain_cache else [(0.0, 0.0)] * len(projections)
        return [(p1 + self.w_domain * d1, p2 + self.w_domain * d2) for (p1, p2), (d1, d2) in zip(prior, domain)]

    # --- stage 1: closed-form refinement ----------------------------------------------------
    @torch.no_grad()
    def refine(self) -> None:
        projections = self.projections()
        k, k_new = self.cfr_pairs()
        kk, nk = k.T @ k, k_new.T @ k
        s2 = self.s_train**2  # the official non-cache path scales the caches twice (docs/parity.md)
        for (_, linear), (c1, c2) in zip(projections, self.caches(projections)):
            w0 = linear.weight.double()
            linear.weight.copy_(closed_form(w0, self.lam, [w0 @ nk, s2 * c1], [kk, s2 * c2]).to(linear.weight.dtype))
        self.refined = True

    def on_fit_start(self) -> None:
        super().on_fit_start()
        data = getattr(self.trainer, "datamodule", None)
        n = getattr(data, "n_concepts", None)
        if n is not None and n != len(self.concepts):
            raise IGMUError(
                f"the data module serves {n} concepts but MACE erases {len(self.concepts)}: give one image set per concept"
            )
        steps, max_steps = getattr(data, "steps_per_concept", None), self.trainer.max_steps
        if steps is not None and max_steps not in (-1, None) and max_steps != steps * len(self.concepts):
            raise IGMUError(
                f"trainer.max_steps is {max_steps} but MACE trains {len(self.concepts)} concept(s) x {steps} steps "
                f"(the data's steps_per_concept): set trainer.max_steps to {steps * len(self.concepts)}"
            )
        if not self.refined:
            self.refine()

    # --- stage 2: one LoRA per concept ------------------------------------------------------
    def concept_mask(self, prompts: list[str], concept: int) -> torch.Tensor:
        padded = self.backbone.tokenize(prompts).cpu()
        eos_id = self.backbone.tokenizer.eos_token_id
        words = word_positions(
            padded, eos_id, [self.backbone.tokenizer(self.concepts[concept], add_special_tokens=False).input_ids]
        )
        if not words.any(1).all():
            raise IGMUError(
                f"MACE prompt '{prompts[0]}' does not hold the concept '{self.concepts[concept]}': fix the templates"
            )
        return (words | pooler_positions(padded, eos_id, self.pooler)).to(self.device)

    def activate(self, names: list[str]) -> None:
        for layer in tuner_layers(self.backbone.unet):
            layer.set_adapter(names)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        concept = int(batch["concept"][0])
        if not (batch["concept"] == concept).all() or concept >= len(self.concepts):
            raise IGMUError(
                f"a MACE batch must hold images of one of the {len(self.concepts)} concepts, got {batch['concept'].tolist()}"
            )
        self.activate([f"mace_{concept}"])  # concept i trains its own LoRA on top of the refined weights
        images, bb = batch["image"], self.backbone
        pairs = self.prompts[concept]
        prompts = [pairs[int(j)][0] for j in torch.randint(len(pairs), (len(images),))]
        with torch.no_grad():
            latents = bb.encode_images(images)
        noise, steps = torch.randn_like(latents), bb.noise_scheduler.config.num_train_timesteps
        if self.importance_sampling:
            t = torch.multinomial(importance_weights(steps), len(images), replacement=True).to(self.device)
        else:
            t = torch.randint(0, steps, (len(images),), device=self.device)
        x_t = bb.noise_scheduler.add_noise(latents, noise, t)
        masks = batch["mask"] if self.types[concept] == "object" else torch.ones_like(batch["mask"])
        with attention_probes(bb.unet) as probs:
            bb.unet(x_t, t, encoder_hidden_states=bb.encode_prompts(prompts))
        loss = masked_attention_norm(probs, self.concept_mask(prompts, concept), masks)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    # --- stage 3: fusion --------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the LoRAs into the refined weights by the closed form, then remove them."""
        unet = self.backbone.unet
        tuned = set(tuner_layers(unet))
        lora_layers = {name: layer for name, layer in unet.named_modules() if layer in tuned}
        projections = self.projections()
        embeds = [self.embed([p[0] for p in pairs]).flatten(0, 1) for pairs in self.prompts]
        grams = [e.T @ e for e in embeds]  # sum e e^T over all 77 tokens of concept i's prompts
        for (name, linear), (c1, c2) in zip(projections, self.caches(projections)):
            w = linear.weight.double()
            vk, kk = 0.0, 0.0
            for i, ee in enumerate(grams):
                delta = lora_layers[name].get_delta_weight(f"mace_{i}").double()
                vk, kk = vk + (w + delta) @ ee, kk + ee
            linear.weight.copy_(
                closed_form(w, self.lam, [vk, self.s_fuse * c1], [kk, self.s_fuse * c2]).to(linear.weight.dtype)
            )
        self.activate([f"mace_{i}" for i in range(len(self.concepts))])  # none is deleted while the only active one
        self.backbone.detach_adapters()
        self.trainable_names = [f"backbone.unet.{name}.weight" for name, _ in projections]

    def on_train_end(self) -> None:
        self.fuse()
        super().on_train_end()
