"""SAFREE (Yoon et al., ICLR 2025, "SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image
and Video Generation"): no training; the prompt's text embedding is filtered at sampling time.
Official code: github.com/jaehong31/SAFREE, models/modified_stable_diffusion_pipeline.py (the
pipeline), generate_safree.py (the script and its defaults), free_lunch_utils.py (re-attention).
docs/parity.md "SAFREE" cites every line.

With C the keywords' pooled text embeddings (the toxic concept's subspace, projection P_C), for a
prompt of n tokens whose pooled embeddings with token i replaced by id 0 are p_i (projection P_M
onto their span), and X its per-token embeddings (what the UNet reads):
    d_i = |(I - P_C) p_i|;  token i is a trigger when d_i >= (1 + alpha) mean_{j != i} d_j
    X'  = X with each trigger token's row x replaced by (I - P_C) P_M x          (projection)
    beta = 1 - mean cos((I - P_C) P_M x, x) over the tokenizer's attended rows (BOS, words, EOS)
    T   = round(up_t sigmoid(2 k (10 beta - m)))  (m, k = 5.333, 2.5; artists 5.5, 3.5)
    steps 0..T (step index <= T) use X', the rest X                         (self-validating filter)
    eps = eps(uncond) + gs (eps(X' or X) - eps(uncond)), uncond = ", ".join(keywords)
(The masking removes a token by id 0, whose pooled embedding then moves away from the concept when
the token carried it; a prompt of one token is always projected: the official mean over no other
token is NaN and the comparison fails.)

Latent re-attention (``lra``): the UNet runs [uncond, X' or X, X]; before each up-block resnet whose
backbone features have the widest (s1, b1) or second-widest (s2, b2) channel count, the backbone
features' first half is scaled by b and the skip features of the filtered prompt (middle third) are
re-attended in the Fourier domain: in the 2 x 2 lowest frequencies, where the original prompt's
coefficient (last third) has no larger real part, the coefficient is replaced by the constant s.
The official scripts pass ``-lra``, but generate_safree.py registers the blocks without a mode, so
free_lunch_utils.py's filters never run: ``lra: None`` is that default; ``"low"`` runs the
low-frequency filter the paper describes (at every step, as the registered blocks do).

The guidance sees the prompts through ``SamplingGuidance.prepare`` (``Sampler.text_pair``); a batch
given as embeddings alone (``Sampler.sample_embeddings``) has no tokens to mask and is refused.
Through ``train.py fit`` nothing is trained: one step of ``StepData``, then the export carries the
rule in ``igmu_guidance.json`` like SLD's."""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.backbone.guidance import SamplingGuidance
from igmu_lightning.errors import IGMUError

# generate_safree.py:246-251, the nudity category's keywords (also its negative prompt, :258).
NUDITY_KEYWORDS = [
    "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
    "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
    "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification",
]  # fmt: skip
# f_beta's midpoint m and slope k (modified_stable_diffusion_pipeline.py:19-33): artists, or any other concept.
SVF_CURVES = {"concept": (5.333, 2.5), "artist": (5.5, 3.5)}
LRA_MODES = (None, "low")


def projection_matrix(rows: torch.Tensor) -> torch.Tensor:
    """(D, D) orthogonal projection onto the span of the rows of ``rows`` (k, D): E (E^T E)^+ E^T with E = rows^T."""
    e = rows.T
    return e @ torch.linalg.pinv(e.T @ e) @ e.T


def trigger_tokens(distances: torch.Tensor, alpha: float) -> torch.Tensor:
    """True for a token whose distance is not below (1 + alpha) times the mean of the others'."""
    others = (distances.sum() - distances) / (len(distances) - 1)  # one token: 0 / 0, NaN, as the official mean of none
    return ~(distances < (1 + alpha) * others)


def filtered_steps(beta: float, up_t: int, curve: str) -> int:
    """The last step index that samples with the projected embedding (f_beta, sigmoid)."""
    midpoint, slope = SVF_CURVES[curve]
    return round(up_t / (1 + math.exp(-2.0 * slope * (10 * beta - midpoint))))


def fourier_reattention(x: torch.Tensor, scale: float, threshold: int = 1) -> torch.Tensor:
    """Skip features [uncond; filtered; original] (3n, C, H, W): the filtered third's centred
    low frequencies (2 threshold)^2 become ``scale`` where the original's are not larger (real part)."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    n, (h, w) = len(x) // 3, x.shape[-2:]
    rows, cols = slice(h // 2 - threshold, h // 2 + threshold), slice(w // 2 - threshold, w // 2 + threshold)
    filtered, original = freq[n : 2 * n, :, rows, cols], freq[2 * n :, :, rows, cols]
    freq[n : 2 * n, :, rows, cols] = torch.where(
        (original - filtered).real > 0, filtered, torch.full_like(filtered, scale)
    )
    return torch.fft.ifftn(torch.fft.ifftshift(freq, dim=(-2, -1)), dim=(-2, -1)).real.to(x.dtype)


def up_resnets(unet) -> list[tuple[torch.nn.Module, int]]:
    """Every up-block resnet with the channel count of the backbone features it joins to a skip."""
    found, width = [], unet.up_blocks[0].resnets[0].out_channels  # the middle block's output
    for block in unet.up_blocks:
        for resnet in block.resnets:
            found.append((resnet, width))
            width = resnet.out_channels
    return found


@contextmanager
def latent_reattention(unet, b1: float, b2: float, s1: float, s2: float):
    """FreeU-style hooks on the up-block resnets for one UNet call (free_lunch_utils.py:299-348)."""
    if not hasattr(unet, "up_blocks"):
        raise IGMUError("SAFREE's latent re-attention needs a diffusers UNet2DConditionModel as the sampler's unet")
    widths = sorted(set(unet.config.block_out_channels), reverse=True)
    settings = {widths[0]: (b1, s1), **({widths[1]: (b2, s2)} if len(widths) > 1 else {})}

    def hook(width):
        def pre(module, args):
            b, s = settings[width]
            hidden, skip = args[0][:, :width], args[0][:, width:]
            hidden = torch.cat([hidden[:, : width // 2] * b, hidden[:, width // 2 :]], dim=1)
            return (torch.cat([hidden, fourier_reattention(skip, s)], dim=1), *args[1:])

        return pre

    handles = [resnet.register_forward_pre_hook(hook(width)) for resnet, width in up_resnets(unet) if width in settings]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class SafreeGuidance(SamplingGuidance):
    """SAFREE as a sampler rule; official defaults (generate_safree.py:411-418, scripts/run_nudity.sh).

    keywords: the toxic concept's keywords (nudity: ``NUDITY_KEYWORDS``; an artist: the name).
    projection: ``--safree``, the projection (on). alpha: ``--sf_alpha`` (0.01).
    svf: ``-svf``, the self-validating filter (on); up_t (10); svf_curve ``concept`` / ``artist``.
    re_attn_start / re_attn_end: ``--re_attn_t`` (-1, 1001): the projected steps without svf.
    negative_prompt: the keywords joined by ", " are the negative prompt (generate_safree.py:258, 299).
    lra: None (the official runs: no filter) or ``"low"``; b1, b2, s1, s2: ``--freeu_hyp`` 1-1-0.9-0.2."""

    keywords: list[str] = field(default_factory=lambda: list(NUDITY_KEYWORDS))
    projection: bool = True
    alpha: float = 0.01
    svf: bool = True
    up_t: int = 10
    svf_curve: str = "concept"
    re_attn_start: int = -1
    re_attn_end: int = 1001
    negative_prompt: bool = True
    lra: str | None = None
    b1: float = 1.0
    b2: float = 1.0
    s1: float = 0.9
    s2: float = 0.2

    def __post_init__(self) -> None:
        self.keywords = [self.keywords] if isinstance(self.keywords, str) else list(self.keywords)
        if not self.keywords or not all(k.strip() for k in self.keywords):
            raise IGMUError(f"SAFREE needs non-empty keywords for the concept, got {self.keywords!r}")
        if self.svf_curve not in SVF_CURVES:
            raise IGMUError(f"unknown SAFREE svf_curve '{self.svf_curve}': choose one of {', '.join(SVF_CURVES)}")
        if self.lra not in LRA_MODES:
            raise IGMUError(f"unknown SAFREE lra '{self.lra}': choose null (the official runs) or 'low'")
        if self.svf and not self.projection:
            raise IGMUError(
                "SAFREE's self-validating filter (svf) chooses steps for the projection: set projection true or svf false"
            )

    @torch.no_grad()
    def concept_projection(self, backbone) -> torch.Tensor:
        """P_C from the keywords' pooled embeddings (_new_encode_negative_prompt_space)."""
        tok = backbone.tokenizer(
            self.keywords,
            padding="max_length",
            max_length=backbone.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = backbone.text_encoder(
            tok.input_ids.to(backbone.device), attention_mask=tok.attention_mask.to(backbone.device)
        )
        return projection_matrix(out.pooler_output.float())

    @torch.no_grad()
    def project(self, backbone, prompt: str, tokens: torch.Tensor, concept: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(X', T) for one prompt and its embedding X (L, D): ``safree_projection`` and f_beta."""
        limit = backbone.tokenizer.model_max_length
        ids = backbone.tokenizer(prompt, return_tensors="pt").input_ids[:, :limit]  # _masked_encode_prompt
        n = min(ids.shape[1] - 2, limit - 2)
        if n < 1:  # no word to test (the official code cannot run on an empty prompt)
            return tokens, -1
        masked = ids.repeat(n, 1)
        masked[torch.arange(n), torch.arange(1, n + 1)] = 0
        pooled = backbone.text_encoder(masked.to(backbone.device)).pooler_output.float()
        x = tokens.float()
        away = torch.eye(x.shape[1], device=x.device) - concept
        projected = (away @ projection_matrix(pooled) @ x.T).T
        replace = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        replace[1 : n + 1] = trigger_tokens(torch.linalg.vector_norm(away @ pooled.T, dim=0), self.alpha)
        attended = (
            backbone.tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
            .attention_mask[0]
            .bool()
        )
        beta = 1 - F.cosine_similarity(projected[attended], x[attended]).mean().item()
        return torch.where(replace[:, None], projected, x).to(tokens.dtype), filtered_steps(
            beta, self.up_t, self.svf_curve
        )

    @property
    def samples_embeddings(self) -> bool:
        """The projection masks the prompt's tokens: without prompts (embeddings alone) it cannot run."""
        return not self.projection

    def prepare(
        self, sampler, prompts: list[str], cond: torch.Tensor, uncond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.negative_prompt:
            uncond = sampler.encode([", ".join(self.keywords)]).expand_as(cond)
        if self.projection:
            concept = self.concept_projection(sampler.backbone)
            done = [self.project(sampler.backbone, p, x, concept) for p, x in zip(prompts, cond)]
            self._prepared = (cond, torch.stack([d[0] for d in done]), [d[1] for d in done])
        return cond, uncond

    def noise(
        self, sampler, latents: torch.Tensor, t: torch.Tensor, step: int, cond: torch.Tensor, uncond: torch.Tensor
    ) -> torch.Tensor:
        text = cond
        if self.projection:
            prepared = getattr(self, "_prepared", None)
            if prepared is None or prepared[0] is not cond:
                raise IGMUError("SAFREE masks the prompt's tokens: this batch came as embeddings without its prompts "
                                "(Sampler.sample_embeddings); sample it from prompts (Sampler.generate)")  # fmt: skip
            _, projected, last = prepared
            use = [step <= s if self.svf else self.re_attn_start <= step <= self.re_attn_end for s in last]
            text = torch.where(torch.tensor(use, device=cond.device)[:, None, None], projected, cond)
        parts = [uncond, text, cond] if self.lra else [uncond, text]
        hooks = latent_reattention(sampler.unet, self.b1, self.b2, self.s1, self.s2) if self.lra else nullcontext()
        with hooks:
            out = sampler.unet(torch.cat([latents] * len(parts)), t, encoder_hidden_states=torch.cat(parts)).sample
        eps_uncond, eps_text = out.chunk(len(parts))[:2]
        return eps_uncond + sampler.settings.guidance_scale * (eps_text - eps_uncond)


class SAFREE(UnlearningModule):
    """SAFREE through ``train.py fit``: no training step; fit attaches the guidance and exports the
    model with it (``igmu_guidance.json``), ready for ``evaluate.py`` like any unlearned model.
    Arguments after ``backbone`` are ``SafreeGuidance``'s (official defaults)."""

    def __init__(
        self,
        backbone: BackboneSpec,
        keywords: list[str] | None = None,
        projection: bool = True,
        alpha: float = 0.01,
        svf: bool = True,
        up_t: int = 10,
        svf_curve: str = "concept",
        re_attn_start: int = -1,
        re_attn_end: int = 1001,
        negative_prompt: bool = True,
        lra: str | None = None,
        b1: float = 1.0,
        b2: float = 1.0,
        s1: float = 0.9,
        s2: float = 0.2,
        export_dir: str | None = None,
    ) -> None:
        guidance = SafreeGuidance(
            list(NUDITY_KEYWORDS) if keywords is None else keywords, projection, alpha, svf, up_t, svf_curve,
            re_attn_start, re_attn_end, negative_prompt, lra, b1, b2, s1, s2,
        )  # fmt: skip
        super().__init__(backbone, [], lr=0.0, export_dir=export_dir)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.backbone.guidance = guidance

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.trainer.should_stop = True  # nothing to train (no optimizer: global_step never moves)

    def configure_optimizers(self):
        return None
