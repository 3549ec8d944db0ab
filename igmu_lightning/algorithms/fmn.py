"""FMN, Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion Models (Zhang et al., CVPR-W
2024), attention re-steering.

Concept images are noised, x_t = q(x_0, t, eps) with t ~ U{0..T-1}, and run through the UNet with
their prompts; every cross-attention (attn2) layer l gives A_l = softmax(Q K^T * scale), shape
(B, heads, pixels, tokens). With P_b the positions of the concept's tokens inside prompt b:
    L = || concat over l, b of A_l[b, :, :, P_b] ||_2        (not squared; no denoising term)
P_b holds the concept words' tokens and, by ``pooler``, the <|endoftext|> tokens: the official
default (``use_pooler: true``) marks every token equal to <|endoftext|>, which on SD v1.x (padded
with it) is the EOS and all ~70 padding positions (``pooler: all``), on SD 2.x the one EOS
(``pooler: eos``); ``none`` marks the concept words only. Per sample (the official mask broadcast is
right for batch 1 only). The official recipe runs textual inversion first (``use_ti: true``); ours
omits that stage and marks the plain concept word (docs/parity.md)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
from diffusers.models.attention_processor import Attention
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError

POOLERS = ("all", "eos", "none")

def word_positions(padded: torch.Tensor, eos_id: int, words: list[list[int]]) -> torch.Tensor:
    """(B, L) bool: True at every occurrence of any of the token sequences ``words`` among the word
    tokens of each padded row (after BOS, up to its first <|endoftext|>)."""
    mask = torch.zeros_like(padded, dtype=torch.bool)
    eos = padded == eos_id
    for b in range(len(padded)):
        ids = padded[b, : int(eos[b].int().argmax()) + 1].tolist()  # up to the first EOS
        for seq in words:
            for i in range(1, len(ids) - len(seq)):  # words only: BOS at 0, EOS last
                if ids[i : i + len(seq)] == seq:
                    mask[b, i : i + len(seq)] = True
    return mask


def pooler_positions(padded: torch.Tensor, eos_id: int, pooler: str) -> torch.Tensor:
    """(B, L) bool: the <|endoftext|> positions a ``pooler`` marks: ``all`` every one (on SD v1.x the
    EOS and all padding), ``eos`` the first of each row, ``none`` nothing."""
    eos = padded == eos_id
    if pooler == "eos":
        eos &= eos.cumsum(1) == 1
    return eos if pooler != "none" else torch.zeros_like(eos)


class AttentionProbe:
    """An attention processor that computes the probabilities explicitly and appends them,
    (B, heads, queries, keys) in float32, to ``store`` (SDPA never materialises them)."""

    def __init__(self, store: list[torch.Tensor]) -> None:
        self.store = store

    def __call__(
        self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw
    ):
        if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None \
                or attn.residual_connection or hidden_states.ndim != 3:  # fmt: skip
            raise IGMUError("FMN's attention probe handles SD-style cross-attention only (no masks, norms, residuals)")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k, v = (x.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for x in (q, k, v))  # (B, heads, N, d)
        probs = (q @ k.transpose(-1, -2) * attn.scale).float().softmax(-1)
        self.store.append(probs)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).flatten(2)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


@contextmanager
def attention_probes(unet: torch.nn.Module):
    """Route every attn2 layer through an ``AttentionProbe`` inside the block; yields the list its
    probabilities land in (layer order of the forward pass). The original processors come back."""
    layers = [m for n, m in unet.named_modules() if n.endswith("attn2") and isinstance(m, Attention)]
    if not layers:
        raise IGMUError("this UNet has no cross-attention (attn2) layers for FMN to re-steer")
    originals, store = [m.processor for m in layers], []
    probe = AttentionProbe(store)
    try:
        for layer in layers:
            layer.set_processor(probe)
        yield store
    finally:
        for layer, processor in zip(layers, originals):
            layer.set_processor(processor)


class FMN(UnlearningModule):
    """Args:
    backbone: the model to erase from; batches come from a forget/retain data module ("forget" only).
    concept: the concept word(s) whose tokens are suppressed, e.g. "triangle" or ["van gogh"];
        every forget prompt must contain one of them.
    pooler: which <|endoftext|> tokens are marked besides the concept's: ``all`` (the official
        ``use_pooler: true`` on SD v1.x: EOS and every padding token), ``eos`` (the first one only,
        what the official code marks on SD 2.x) or ``none``.
    trainable: ``unet`` (official default, only_optimize_ca false) or ``xattn`` (attn2 only).
    lr: AdamW learning rate (None: 2e-6, the official).
    weight_decay: AdamW weight decay (None: 0.01, the official).
    optimizer, lr_scheduler: replace the official AdamW / the constant lr (``utils.optim``: then leave lr
        and weight_decay unset).
    """

    # docs/parity.md, Forget-Me-Not: optimizer (configs/attn.yaml)
    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.AdamW, {"lr": 2e-6, "weight_decay": 0.01}

    def __init__(
        self,
        backbone: BackboneSpec,
        concept: str | list[str],
        pooler: Literal["all", "eos", "none"] = "all",
        trainable: Literal["unet", "xattn"] = "unet",
        lr: float | None = None,
        weight_decay: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if trainable not in ("unet", "xattn"):
            raise IGMUError(f"FMN trains 'unet' or 'xattn', got '{trainable}'")
        if pooler not in POOLERS:
            raise IGMUError(f"unknown FMN pooler '{pooler}': choose one of {', '.join(POOLERS)}")
        concepts = [concept] if isinstance(concept, str) else list(concept)
        if not concepts or not all(c.strip() for c in concepts):
            raise IGMUError("FMN needs a non-empty concept word to suppress")
        super().__init__(backbone, [trainable], lr, export_dir, optimizer, lr_scheduler, weight_decay)
        self.save_hyperparameters()
        self.pooler = pooler
        tok = self.backbone.tokenizer
        self.concepts = {c: tok(c, add_special_tokens=False).input_ids for c in concepts}

    def on_fit_start(self) -> None:
        """Every forget prompt must hold a concept word: checked for all of them before the first step."""
        super().on_fit_start()
        data = getattr(self.trainer, "datamodule", None)
        prompts = data.forget_prompts() if hasattr(data, "forget_prompts") else None
        if not prompts:
            return
        tok = self.backbone.tokenizer
        lacking = []
        for prompt in dict.fromkeys(prompts):
            ids = tok(prompt, truncation=True, max_length=tok.model_max_length).input_ids
            if not any(ids[i : i + len(seq)] == seq for seq in self.concepts.values() for i in range(1, len(ids) - len(seq))):
                lacking.append(prompt)
        if lacking:
            n = len(set(prompts))
            share = f"none of the {n} forget prompts holds" if len(lacking) == n else f"{len(lacking)} of {n} forget prompts lack"
            raise IGMUError(f"{share} the FMN concept {list(self.concepts)} (e.g. '{lacking[0]}'): "
                            "set concept to the word the forget prompts use, or caption every forget image with it")  # fmt: skip

    def concept_positions(self, prompts: list[str]) -> torch.Tensor:
        """(B, L) bool: True at the tokens of every occurrence of a concept in each prompt, and at
        the <|endoftext|> positions ``pooler`` adds (in the padded ids the text encoder sees)."""
        padded = self.backbone.tokenize(prompts).cpu()  # BOS ... EOS, padded as the encoder sees them
        eos_id = self.backbone.tokenizer.eos_token_id
        mask = word_positions(padded, eos_id, list(self.concepts.values()))
        for b in (~mask.any(1)).nonzero().flatten().tolist():
            raise IGMUError(f"prompt '{prompts[b]}' does not contain the FMN concept {list(self.concepts)}: "
                            "caption every forget image with the concept word")  # fmt: skip
        return (mask | pooler_positions(padded, eos_id, self.pooler)).to(self.device)

    def attention_loss(self, x_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        positions = self.concept_positions(prompts)
        context = self.backbone.encode_prompts(prompts)
        with attention_probes(self.backbone.unet) as probs:
            self.backbone.unet(x_t, t, encoder_hidden_states=context)
        # (B, heads, pixels, L) -> (B, L, heads, pixels), indexed with the per-sample (B, L) mask
        picked = [p.permute(0, 3, 1, 2)[positions].flatten() for p in probs]
        return torch.cat(picked).norm()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.freeze_unreached()

    def freeze_unreached(self) -> list[str]:
        """Freeze the trainable tensors the loss never reaches (attn2's values and outputs, the
        layers after the last attn2): one probe backward finds them. The optimizer would skip them
        anyway (their gradient is None), so training is unchanged, but DDP needs every trainable
        tensor in the graph. Returns the frozen names."""
        unet, params = self.backbone.unet, dict(self.backbone.named_parameters())
        names = [n.removeprefix("backbone.") for n in self.trainable_names]
        size = unet.config.sample_size
        x = torch.randn(1, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
        word = next(iter(self.concepts))
        loss = self.attention_loss(x.to(self.device), torch.tensor([500], device=self.device), [word])
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        frozen = [n for n, g in zip(names, grads) if g is None]
        for name in frozen:
            params[name].requires_grad_(False)
        self.trainable_names = [f"backbone.{n}" for n, g in zip(names, grads) if g is not None]
        return frozen

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        forget = batch["forget"]
        x_t, t, _ = self.noised(forget["image"])
        loss = self.attention_loss(x_t, t, forget["prompt"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(forget["prompt"]))
        return loss
