"""Receler, Reliable Concept Erasing of Text-to-Image Diffusion Models via Lightweight Erasers (Huang
et al., ECCV 2024; official code github.com/jasper0314-huang/Receler, train_receler.py with
receler/erasers/utils.py and receler/concept_reg.py; cited line by line in docs/parity.md).

An eraser after every cross-attention (each attn2 of the UNet, our ``ModuleAdapter`` seam with the
``Eraser`` module): a = attn2's output becomes a + up(GELU(down(a))), rank 128, ``up`` at zero; only
the erasers train (Adam lr 3e-4, 500 iterations, one concept c per iteration). Per iteration:

    x_t   ESD's: k ~ U{0..S-1}, DDIM from noise with CFG 3 on c by the model *with* its erasers, the
          paper-era (compvis) query timestep t (``ESD.sample_xt``);
    e_0, e_c = eps*(x_t, ""), eps*(x_t, c), the frozen model (erasers off); from e_c's forward the
          cross-attention probabilities of c's word tokens give the mask M: averaged over those
          tokens, the heads and the layers at 16 x 16, min-max normalised, 1 where >= 0.1;
    attack 50 Adam steps (lr 0.1, weight decay 0.1) on 16 conditioning-space embeddings delta_c
          (one set per concept, kept across iterations, U[0, 1) at first), put in E(c) right after
          c's word tokens: delta <- argmin || eps(x_t, E(c)[delta]) - e_c ||^2;
    L     = || eps(x_t, E(c)[delta]) - (e_0 - eta (e_c - e_0)) ||^2
            + 0.1 * mean over erasers of  sum_{pixels outside M} mean_channels(eraser_out^2) / #outside
          with the prediction and eraser outputs of the last attack step's forward (before its update).

A fixed official bug: the official attack writes delta into ``emb_n[:, idx, :].data``, a copy made
by advanced indexing (train_receler.py:149), so the UNet never sees delta and the erasers train
against the plain concept (ESD plus the penalty, after 49 forwards that change nothing). Here
delta is in the conditioning of every attack step and of the loss. The exported folder holds the base
weights and the erasers as an ``ErasersGuidance`` (``igmu_guidance.json`` and
``igmu_erasers.safetensors``), which loading hooks onto the UNet's attn2 for good (``bind``): every
call of the loaded UNet runs with them, an attack's as a sampler's; the delta
(``igmu_delta.safetensors``) attaches them as adapters (``WithDelta``)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from igmu_lightning.algorithms.esd import ESD
from igmu_lightning.algorithms.fmn import attention_probes
from igmu_lightning.backbone import Backbone, BackboneSpec
from igmu_lightning.backbone.guidance import GuidanceTensors, SamplingGuidance
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.adapters import Eraser, ModuleAdapter, merged_state, plain_copy

NAME = "receler"  # the erasers are each attn2's child igmu_receler
TARGETS = r".*\.attn2"


def concept_mask(probs: list[torch.Tensor], positions: torch.Tensor, resolution: int, threshold: float) -> torch.Tensor:
    """(B, r, r) 0/1 mask (concept_reg.py:11-34): cross-attention probabilities (B, heads, pixels,
    tokens) of the layers with r x r pixels, averaged over the ``positions`` tokens, the heads and
    the layers, min-max normalised per image, 1 where >= threshold."""
    maps = [p[..., positions].mean(-1).mean(1) for p in probs if p.shape[2] == resolution**2]
    if not maps:
        found = sorted({math.isqrt(p.shape[2]) for p in probs})
        raise IGMUError(
            f"Receler mask_resolution {resolution}: no cross-attention layer has {resolution}x{resolution} pixels (found {found})"
        )
    avg = torch.stack(maps, 1).mean(1).unflatten(-1, (resolution, resolution))
    lo, hi = avg.amin((1, 2), keepdim=True), avg.amax((1, 2), keepdim=True)
    return ((avg - lo) / (hi - lo) >= threshold).float()


def eraser_penalty(outputs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over erasers of sum over pixels outside the mask of mean_channels(out^2) / #outside
    (train_receler.py:172-185); outputs (B, pixels, D), the mask resized to each (nearest)."""
    terms = []
    for out in outputs:
        side = math.isqrt(out.shape[1])
        outside = 1 - F.interpolate(mask[:, None], (side, side)).flatten(1)  # (B, pixels)
        terms.append(((out * outside[..., None]) ** 2).mean(-1).sum() / (outside.sum() + 1e-9))
    return torch.stack(terms).mean()


@contextmanager
def eraser_outputs(unet: nn.Module):
    """Yields the list every eraser's own output, up(GELU(down(a))), lands in during a forward."""
    store, handles = [], []
    try:
        for name, module in unet.named_modules():
            if name.endswith(f"igmu_{NAME}.up"):
                handles.append(module.register_forward_hook(lambda m, args, out: store.append(out)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _erase(down_w, down_b, up_w, up_b, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    p = [x.to(output.device, output.dtype) for x in (down_w, down_b, up_w, up_b)]
    return output + F.linear(F.gelu(F.linear(output, p[0], p[1])), p[2], p[3])


@dataclass
class ErasersGuidance(GuidanceTensors, SamplingGuidance):
    """Receler's erasers at sampling time: plain CFG with every attn2 output a + up(GELU(down(a)))
    (the official diffusers_erasers.py:27-40). Args: sha256 (of the eraser tensors)."""

    sha256: str = ""

    TENSORS_FILE, KIND = "igmu_erasers.safetensors", "Receler's erasers"

    def _hook(self, unet: nn.Module) -> list:
        tensors, handles = self.tensors, []
        for name in sorted({k.split(f".igmu_{NAME}.")[0] for k in tensors}):
            key = f"{name}.igmu_{NAME}"
            parts = [tensors[f"{key}.{p}"] for p in ("down.weight", "down.bias", "up.weight", "up.bias")]
            handles.append(unet.get_submodule(name).register_forward_hook(partial(_erase, *parts)))
        return handles

    def bind(self, backbone) -> None:
        """The erasers are part of the network (official: modules inside the UNet): hooked on the
        loaded model's attn2 for good, so attacks and fine-tuning that call its UNet see them too."""
        self._hook(backbone.unet)
        self._bound = backbone.unet

    @contextmanager
    def applied(self, unet: nn.Module):
        """The erasers on ``unet`` for the duration (nothing to add where they are bound already)."""
        handles = [] if unet is getattr(self, "_bound", None) else self._hook(unet)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def noise(self, sampler, latents, t, step, cond, uncond) -> torch.Tensor:
        with self.applied(sampler.unet):
            sampler.guidance = None  # plain CFG, erasers on
            try:
                return sampler.guided_noise(latents, t, step, cond, uncond)
            finally:
                sampler.guidance = self


class Receler(ESD):
    """Args (official defaults: train_receler.py:236-261):
    backbone: the model to erase from; the concept is each batch's ``prompt`` (batch 1).
    eraser_rank: 128. concept_reg_weight: 0.1. mask_threshold: 0.1. mask_resolution: 16 (the
        official "16 x 16 cross-attention maps", concept_reg.py:24).
    advrs_iters: attack steps per iteration (50); 0: no attack, the loss on the plain concept (ours:
        the official then trains nothing). num_advrs_prompts: 16. advrs_lr, advrs_weight_decay: 0.1, 0.1.
    negative_guidance, start_guidance, ddim_steps: ESD's (1, 3, 50).
    lr: Adam's (None: 3e-4).
    """

    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.Adam, {"lr": 3e-4}  # train_receler.py:71, 237
    VARIANTS = {"erasers": ["adapters"]}

    def __init__(
        self,
        backbone: BackboneSpec,
        eraser_rank: int = 128,
        concept_reg_weight: float = 0.1,
        mask_threshold: float = 0.1,
        mask_resolution: int = 16,
        advrs_iters: int = 50,
        num_advrs_prompts: int = 16,
        advrs_lr: float = 0.1,
        advrs_weight_decay: float = 0.1,
        negative_guidance: float = 1.0,
        start_guidance: float = 3.0,
        ddim_steps: int = 50,
        lr: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if eraser_rank < 1 or mask_resolution < 1 or advrs_iters < 0 or num_advrs_prompts < 1:
            raise IGMUError("Receler needs eraser_rank, mask_resolution, num_advrs_prompts >= 1 and advrs_iters >= 0")
        self.rank = eraser_rank  # attach_adapters (in the base's __init__) reads it
        super().__init__(backbone, variant="erasers", negative_guidance=negative_guidance, start_guidance=start_guidance,
                         ddim_steps=ddim_steps, sample_with="trained", timestep_mapping="compvis", lr=lr,
                         export_dir=export_dir, optimizer=optimizer, lr_scheduler=lr_scheduler)  # fmt: skip
        self.save_hyperparameters()
        self.reg_weight, self.threshold, self.resolution = concept_reg_weight, mask_threshold, mask_resolution
        self.advrs_iters, self.k, self.advrs_lr, self.advrs_wd = (
            advrs_iters,
            num_advrs_prompts,
            advrs_lr,
            advrs_weight_decay,
        )
        self.adversaries: dict[str, tuple[nn.Parameter, torch.optim.Adam]] = {}  # per concept

    def attach_adapters(self, backbone: Backbone) -> None:
        eraser = f"{Eraser.__module__}.{Eraser.__qualname__}"
        backbone.attach(ModuleAdapter(eraser, TARGETS, name=NAME, init_args={"rank": self.rank}))

    def adversary(self, concept: str, c: torch.Tensor) -> tuple[nn.Parameter, torch.optim.Adam]:
        """The concept's adversarial embeddings (1, k, D), U[0, 1) at first (train_receler.py:103-107), and their Adam."""
        if concept not in self.adversaries:
            delta = nn.Parameter(torch.rand((1, self.k, c.shape[-1])).to(c.device, c.dtype))
            self.adversaries[concept] = (delta, torch.optim.Adam([delta], lr=self.advrs_lr, weight_decay=self.advrs_wd))
        return self.adversaries[concept]

    def attacked_forward(self, concept: str, n: int, x_t, t, c, e_c) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``advrs_iters`` attack steps (train_receler.py:145-161, the write fixed) with delta right
        after the concept's n word tokens; the prediction and eraser outputs of the last step's
        forward (before its update), with gradients to the erasers."""
        if 1 + n + self.k > c.shape[1]:
            raise IGMUError(f"Receler: '{concept}' ({n} tokens) and {self.k} adversarial embeddings do not fit in {c.shape[1]} positions")  # fmt: skip
        slots = slice(1 + n, 1 + n + self.k)
        delta, opt = self.adversary(concept, c) if self.advrs_iters else (None, None)
        for i in range(max(self.advrs_iters, 1)):
            cond = c.detach().clone()
            if delta is not None:
                cond[:, slots] = delta.detach()
                cond.requires_grad_(True)
            with eraser_outputs(self.backbone.unet) as outs:
                e_n = self.backbone.unet(x_t, t, encoder_hidden_states=cond).sample
            if delta is not None:
                last = i == self.advrs_iters - 1
                (grad,) = torch.autograd.grad(F.mse_loss(e_n, e_c), [cond], retain_graph=last)
                delta.grad = grad[:, slots]
                opt.step()
                opt.zero_grad()
        return e_n, outs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        concepts = list(batch["prompt"])
        if len(concepts) != 1 or not concepts[0].strip():
            raise IGMUError(
                f"Receler erases one non-empty concept per step (batch size 1, as the official): got {concepts}"
            )
        concept, bb = concepts[0], self.backbone
        with torch.no_grad():
            c, null = bb.encode_prompts(concepts), bb.encode_prompts([""])
        x_t, t = self.sample_xt(c, null, int(torch.randint(0, self.ddim_steps, ())), 1)
        e_0 = self.teacher(x_t, t, null).sample
        with attention_probes(bb.unet) as probs:
            e_c = self.teacher(x_t, t, c).sample
        n = len(bb.tokenizer(concept, add_special_tokens=False)["input_ids"])
        mask = concept_mask(probs, torch.arange(1, 1 + n), self.resolution, self.threshold)
        e_n, outs = self.attacked_forward(concept, n, x_t, t, c, e_c)
        erase = F.mse_loss(e_n.float(), (e_0 - self.eta * (e_c - e_0)).float())
        penalty = eraser_penalty(outs, mask)
        loss = erase + self.reg_weight * penalty
        self.log_dict({"train/loss": loss, "train/erase": erase, "train/penalty": penalty}, prog_bar=True, batch_size=1)
        return loss

    # --- resume and export --------------------------------------------------------------------
    def resume_state(self) -> dict:
        return {c: {"delta": d.detach().cpu(), "adam": o.state_dict()} for c, (d, o) in self.adversaries.items()}

    def load_resume_state(self, state: dict) -> None:
        for concept, saved in state.items():
            delta, opt = self.adversary(concept, saved["delta"].to(self.device))
            with torch.no_grad():
                delta.copy_(saved["delta"])
            opt.load_state_dict(saved["adam"])

    def erasers(self) -> ErasersGuidance:
        """The trained erasers (UNet tensor names) as an ``ErasersGuidance``."""
        state = self.backbone.state_dict()
        return ErasersGuidance().with_tensors(
            {n.removeprefix("unet."): state[n] for n in self.backbone.adapter_tensor_names}
        )

    def save_model_folder(self, path: Path) -> Path:
        """The base weights (the erasers do not fold into them) and the erasers as sampling guidance."""
        bb = self.backbone
        names = {n.removeprefix("unet.") for n in bb.adapter_tensor_names}
        plain = Backbone(plain_copy(bb.unet, merged_state(bb.unet, names)), bb.text_encoder, bb.tokenizer, bb.vae, bb.scheduler, bb.source)  # fmt: skip
        plain.guidance = self.erasers()
        return plain.save_pretrained(path)
