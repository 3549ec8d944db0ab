"""Tiny SD-shaped backbones built from configs under a fixed seed: the same component classes as
Stable Diffusion v1.x (and its real CLIP BPE tokenizer), small enough to train on a CPU."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from igmu_lightning.backbone.backbone import Backbone
from igmu_lightning.backbone.loader import BackboneSpec, resolve_model_source
from igmu_lightning.backbone.tokenizer import MAX_LENGTH, clip_tokenizer
from igmu_lightning.errors import IGMUError


def sd_scheduler() -> DDIMScheduler:
    """SD v1.x's noise schedule (scaled-linear betas 0.00085..0.012 over 1000 steps) as DDIM."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


class TinySD(BackboneSpec):
    """A randomly initialised SD-shaped model: same classes, tiny widths.

    Args:
        seed: weights come from ``torch.manual_seed(seed)``; the global RNG is left untouched.
        image_size: pixel resolution; the latent side is ``image_size / 2**(len(vae_channels)-1)``.
        unet_channels: UNet block widths; like SD, every level but the lowest has cross-attention.
        attention_head_dim: channels per attention head.
        text_width, text_layers, text_heads: CLIP text transformer size (vocabulary is CLIP's 49408).
        vae_channels: VAE block widths; ``(32,)`` makes a factor-1 VAE.
        latent_channels: 4, as SD.
        vae_from: a diffusers model folder whose trained VAE replaces the random one (the second
            stage of pretraining: the UNet learns in the latent space of a VAE trained first).
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 16,
        unet_channels: tuple[int, ...] = (32, 64),
        attention_head_dim: int = 8,
        layers_per_block: int = 1,
        text_width: int = 32,
        text_layers: int = 2,
        text_heads: int = 2,
        vae_channels: tuple[int, ...] = (32, 32),
        latent_channels: int = 4,
        norm_num_groups: int = 8,
        vae_from: str | None = None,
    ) -> None:
        self.seed = seed
        self.image_size = image_size
        self.unet_channels = tuple(unet_channels)
        self.attention_head_dim = attention_head_dim
        self.layers_per_block = layers_per_block
        self.text_width = text_width
        self.text_layers = text_layers
        self.text_heads = text_heads
        self.vae_channels = tuple(vae_channels)
        self.latent_channels = latent_channels
        self.norm_num_groups = norm_num_groups
        self.vae_from = vae_from

    def describe(self) -> str:
        return f"TinySD(seed={self.seed}, image_size={self.image_size}, unet={list(self.unet_channels)})"

    def build(self) -> Backbone:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return Backbone(
                self._unet(), self._text_encoder(), clip_tokenizer(), self._vae(), sd_scheduler(), self.describe()
            )

    def _unet(self) -> UNet2DConditionModel:
        levels = len(self.unet_channels)
        down = ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"]
        up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1)
        scale = 2 ** (len(self.vae_channels) - 1)
        return UNet2DConditionModel(
            sample_size=self.image_size // scale,
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            layers_per_block=self.layers_per_block,
            block_out_channels=self.unet_channels,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            cross_attention_dim=self.text_width,
            attention_head_dim=self.attention_head_dim,
            norm_num_groups=self.norm_num_groups,
        )

    def _text_encoder(self) -> CLIPTextModel:
        tokenizer = clip_tokenizer()
        config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.text_width,
            intermediate_size=4 * self.text_width,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=MAX_LENGTH,
            projection_dim=self.text_width,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return CLIPTextModel(config)

    def _vae(self) -> AutoencoderKL:
        if self.vae_from:
            source, local_only = resolve_model_source(self.vae_from)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=local_only)
            if tuple(vae.config.block_out_channels) != self.vae_channels or vae.config.latent_channels != self.latent_channels:
                raise IGMUError(
                    f"the VAE in '{self.vae_from}' has channels {list(vae.config.block_out_channels)} and "
                    f"{vae.config.latent_channels} latent channels; set vae_channels/latent_channels to match"
                )
            return vae
        n = len(self.vae_channels)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=self.vae_channels,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=self.image_size,
        )
