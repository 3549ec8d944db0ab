"""The one diffusion backbone every algorithm, evaluator and test uses: SD v1.x's UNet, CLIP text
encoder and tokenizer, VAE and noise scheduler, with helpers to encode prompts and images."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from igmu_lightning.backbone.guidance import GUIDANCE_FILE, SamplingGuidance
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.hashing import module_hash
from igmu_lightning.utils.io import follow_umask, make_temp_dir

COMPONENTS = ("unet", "text_encoder", "vae")




_WARNED_LONG: set[str] = set()  # prompts already checked for length in this process


def warn_if_truncated(tokenizer, prompt: str) -> None:
    """Warn (once per prompt) when ``prompt`` holds more tokens than the text encoder reads."""
    _WARNED_LONG.add(prompt)
    limit = tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=True, max_length=1_000_000).input_ids  # all of it, without HF's own warning
    if len(ids) > limit:
        kept = tokenizer.decode(ids[1 : limit - 1])
        warnings.warn(
            f"prompt '{prompt[:60]}...' is {len(ids)} tokens, over the tokenizer's limit of {limit}: "
            f"truncated to '...{kept[-40:]}' (shorten it to keep every word)",
            PromptTruncatedWarning, stacklevel=3,
        )  # fmt: skip


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text encoder's context and was cut."""


PREDICTION_TYPES = ("epsilon",)  # what the sampler and every training loss assume the UNet predicts


def check_prediction_type(prediction_type: str, given: str) -> None:
    """Refuse a UNet that predicts something other than the noise: its outputs would be read as eps."""
    if prediction_type == "v_prediction":
        raise IGMUError(f"model '{given}' predicts v (scheduler prediction_type v_prediction): SD 2.x v-prediction "
                        "models are not supported yet: use an epsilon-prediction model such as SD v1.x")  # fmt: skip
    if prediction_type not in PREDICTION_TYPES:
        raise IGMUError(f"model '{given}' has scheduler prediction_type '{prediction_type}': only "
                        f"{', '.join(PREDICTION_TYPES)} is supported: use an epsilon-prediction model")  # fmt: skip


class Backbone(nn.Module):
    """UNet, text encoder and VAE as sub-modules (so Lightning moves and saves them), plus the
    tokenizer and the training noise scheduler. Every weight starts frozen: an algorithm unfreezes
    only what it trains."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        source: str = "",
    ) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.vae = vae
        self.tokenizer = tokenizer
        # The sampler builds its own scheduler from this config; training uses DDPM's q(x_t | x_0).
        self.scheduler = scheduler
        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        self.source = source
        # What the UNet predicts (epsilon only for now): samplers and losses may check it.
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        check_prediction_type(self.prediction_type, source)
        # Sampling-time guidance (e.g. SLD's SafetyGuidance): every sampler of this backbone uses it.
        self.guidance: SamplingGuidance | None = None
        # Adapters attached by an algorithm (backbone.adapters.AdapterSpec), the state-dict names of
        # the tensors they added, and the hashes of the base before the first one (deltas check those).
        self.adapters: list = []
        self.adapter_tensor_names: list[str] = []
        self._hashes_before_adapters: dict[str, str] | None = None
        self.requires_grad_(False)
        self.vae.eval()

    # --- text -------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids padded to the encoder's length (77 for SD), as SD's pipeline does. A longer
        prompt is truncated, with a warning (once per prompt) that shows what the encoder sees."""
        limit = self.tokenizer.model_max_length
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids
        for prompt in prompts:
            if prompt not in _WARNED_LONG:
                warn_if_truncated(self.tokenizer, prompt)
        return ids.to(self.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Per-token text embeddings (B, 77, D): the UNet's cross-attention context."""
        return self.text_encoder(self.tokenize(prompts))[0]

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's token embeddings of ``ids`` (B, L, D), before position embeddings: the
        space token-level attacks optimise in."""
        return self.text_encoder.get_input_embeddings()(ids.to(self.device))

    def encode_embeddings(self, token_embeds: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """``encode_prompts`` from token embeddings (B, L, D) instead of ids, with gradients kept: the
        encoder's own forward runs (position embeddings, causal layers, final norm) with its token
        lookup's output replaced. ``ids`` only feed the pooled output, which is not returned."""
        table = self.text_encoder.get_input_embeddings()
        if ids is None:
            ids = torch.zeros(token_embeds.shape[:2], dtype=torch.long, device=token_embeds.device)
        handle = table.register_forward_hook(lambda module, args, out: token_embeds.to(out.dtype))
        try:
            return self.text_encoder(ids.to(token_embeds.device))[0]
        finally:
            handle.remove()

    # --- images -----------------------------------------------------------------------------
    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) to scaled VAE latents, sampled from the posterior."""
        posterior = self.vae.encode((images * 2 - 1).to(self.vae.dtype)).latent_dist
        return posterior.sample(generator) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents to images in [0, 1], float32."""
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    # --- bookkeeping ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def hashes(self) -> dict[str, str]:
        """SHA-256 of each component's weights (names, dtypes, shapes and bytes)."""
        return {name: module_hash(getattr(self, name)) for name in COMPONENTS}

    def base_hashes(self) -> dict[str, str]:
        """``hashes()`` of the base model: taken before the first adapter was attached, if any."""
        return dict(self._hashes_before_adapters) if self._hashes_before_adapters is not None else self.hashes()

    # --- adapters ---------------------------------------------------------------------------
    def attach(self, adapter) -> list[str]:
        """Attach an ``AdapterSpec`` in place and return the names of the tensors it added. They
        start frozen like every weight (an algorithm unfreezes what it trains), and no existing
        tensor's trainability changes (peft's switches set requires_grad)."""
        if self._hashes_before_adapters is None:
            self._hashes_before_adapters = self.hashes()
        flags = {id(p): p.requires_grad for p in self.parameters()}
        before = {id(t) for t in self.state_dict(keep_vars=True).values()}
        adapter.attach(self)
        new = [name for name, t in self.state_dict(keep_vars=True).items() if id(t) not in before]
        if not new:
            raise IGMUError(f"adapter {adapter.describe()} added no tensor: make its targets match modules of the {adapter.component}")
        for p in self.parameters():
            p.requires_grad_(flags.get(id(p), False))
        self.adapters.append(adapter)
        self.adapter_tensor_names.extend(new)
        return new

    def detach_adapters(self) -> None:
        """Remove every attached adapter, leaving the plain model with its base weights as they are
        now: for a method that folds its adapters into the weights itself (MACE's fusion)."""
        for adapter in reversed(self.adapters):
            adapter.detach(self)
        self.adapters, self.adapter_tensor_names = [], []

    @contextmanager
    def adapters_disabled(self):
        """Run the model as its base inside this block: every adapter switched off (the teacher of
        an adapter method). Parameters keep their requires_grad. A no-op without adapters."""
        if not self.adapters:
            yield
            return
        flags = [(p, p.requires_grad) for p in self.parameters()]
        for adapter in self.adapters:
            adapter.set_enabled(self, False)
        try:
            yield
        finally:
            for adapter in reversed(self.adapters):
                adapter.set_enabled(self, True)
            for p, flag in flags:
                p.requires_grad_(flag)

    def pipeline(self, scheduler: SchedulerMixin | None = None) -> StableDiffusionPipeline:
        """A diffusers ``StableDiffusionPipeline`` sharing these weights (no safety checker)."""
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=scheduler or self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a diffusers folder that ``StableDiffusionPipeline.from_pretrained`` loads. It is
        written beside the target and moved into place, so a crash never leaves half a model."""
        if self.adapters:  # diffusers would write the adapter tensors into a folder nothing loads plainly
            raise IGMUError("this backbone carries adapters: save modules.adapters.merged_backbone(backbone) instead, or its delta")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(target)  # with the umask's permissions, not mkdtemp's 0700
        try:
            self.pipeline().save_pretrained(tmp, safe_serialization=True)
            if self.guidance is not None:  # diffusers ignores this file; our loader applies it
                (tmp / GUIDANCE_FILE).write_text(json.dumps(self.guidance.to_config(), indent=2))
            follow_umask(tmp)
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
