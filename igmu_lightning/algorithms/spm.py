"""SPM, One-dimensional Adapter to Rule Them All: Concepts, Diffusion Models and Erasing Applications
(Lyu et al., CVPR 2024; official code github.com/Con6924/SPM, train_spm.py, src/models/spm.py,
src/configs/prompt.py, src/engine/sampling.py, infer_spm.py; cited line by line in docs/parity.md).

A rank-1 LoRA ("SPM", scale alpha / rank) on every Linear / Conv2d inside each Transformer2DModel of
the UNet (our peft ``LoRA`` seam) is trained ESD-style with latent anchoring, per step:
    k ~ U{1..S-1}; x_t = k DDIM steps of S (CFG ``start_guidance``) from noise, the SPM on;
    t = the 1000-step schedule's entry k * 1000 / S;
    L = MSE(eps_spm(x_t, c), eps*(x_t, 0) - g (eps*(x_t, c) - eps*(x_t, 0)))
      + anchor_strength * MSE(eps_spm(x_t, a), eps*(x_t, a))   over the anchor contexts a,
where eps* is the frozen model (adapters off) and the anchors are Gaussian embeddings shaped like c,
each kept with probability 1 - cos(a, c) and rescaled to 0.8..1.2 ||c|| (``sample_anchors``). The
official code pairs each anchor with the unconditional embedding and runs them through its CFG
helper at scale 1, which keeps only the second half of that list: with 4 anchors the contexts that
count are ["", a3, "", a4] (``anchor_set: official``; ``sampled`` uses the four anchors).

At sampling time the adapter is gated per prompt p (``SPMGate``, "facilitated transport"):
m = max over concepts c of max(cos(E(p), E(c)) over the flattened 77 x D embeddings, the share of
c's tokens that p holds); the official code multiplies every tensor of the adapter by m, both
factors, so the adapter's output scales with m ** 2 (``gate_power``). The gate is a
``SamplingGuidance``: the exported folder holds the base weights, ``igmu_guidance.json`` and the
adapter tensors (``igmu_spm.safetensors``), and every sampler of the loaded model gates each prompt
of a batch on its own. The delta (``igmu_delta.safetensors``) is the ungated adapter (weight 1, as
in training).

Where its concept comes from: the batch (``PromptData`` with ``prompts: [concept]``); the concepts
seen in training are the gate's."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.backbone.guidance import GuidanceTensors, SamplingGuidance
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.adapters import LoRA, merged_backbone
from igmu_lightning.sampling import Sampler, SamplerSettings

# Every Linear / Conv2d inside a Transformer2DModel of an SD v1.x UNet (spm.py:81-83, 149-159).
TARGETS = r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))"
ADAPTER = "spm"
METRICS = ("clipcos_tokenuni", "clipcos", "tokenuni")


def sample_anchors(target: torch.Tensor, n: int) -> torch.Tensor:
    """n anchors shaped like ``target`` (sampling.py:7-26): a Gaussian direction kept with
    probability 1 - cos(direction, target), scaled to U(0.8, 1.2) ||target||. Draws from the global
    torch RNG (the official code takes its two uniforms from Python's ``random``)."""
    flat, samples = target.detach().flatten().float(), []
    while len(samples) < n:
        while True:
            noise = torch.randn_like(flat)
            noise = noise / noise.norm()
            if float(torch.rand(())) < 1 - float(F.cosine_similarity(flat, noise, dim=0)):
                break
        samples.append((float(torch.rand(())) * 0.4 + 0.8) * noise * flat.norm())
    return torch.stack(samples).view(n, *target.shape).to(target.dtype)


def token_sets(tokenizer, prompts: list[str]) -> list[set[int]]:
    """Each prompt's token ids without the special ones (infer_spm.py:45-48)."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True
    ).input_ids
    special = set(tokenizer.all_special_ids)
    return [set(row) - special for row in ids]


def gate_weights(tokenizer, prompt_embeds: torch.Tensor, prompts: list[str] | None, concept_embeds: torch.Tensor,
                 concepts: list[str], metric: str = "clipcos_tokenuni") -> torch.Tensor:  # fmt: skip
    """m per prompt (B,): the max over concepts of the max over the metric's scores
    (infer_spm.py:28-51, 135): ``clipcos`` the cosine of the flattened embeddings, ``tokenuni`` the
    share of the concept's tokens in the prompt (left out without prompts: sampling from embeddings)."""
    scores = []
    if "clipcos" in metric:
        p, c = prompt_embeds.flatten(1).float(), concept_embeds.flatten(1).float().to(prompt_embeds.device)
        scores.append(F.cosine_similarity(p[:, None], c[None], dim=-1))
    if "tokenuni" in metric and prompts is not None:
        concept_sets = token_sets(tokenizer, concepts)
        rows = [[len(ps & cs) / len(cs) for cs in concept_sets] for ps in token_sets(tokenizer, prompts)]
        scores.append(torch.tensor(rows, dtype=torch.float32, device=prompt_embeds.device))
    if not scores:
        raise IGMUError("SPM gate metric 'tokenuni' needs the prompts: use clipcos_tokenuni to sample from embeddings")
    return torch.stack(scores).amax(dim=0).amax(dim=1)


def _gated_lora(
    down: torch.Tensor, up: torch.Tensor, weights: torch.Tensor, module: nn.Module, args: tuple, output: torch.Tensor
):
    """Forward hook: the layer's output plus weights[b] * up(down(x)) for batch row b."""
    x = args[0]
    down, up = down.to(x.device, x.dtype), up.to(x.device, x.dtype)
    if isinstance(module, nn.Conv2d):
        h = F.conv2d(F.conv2d(x, down, None, module.stride, module.padding, module.dilation), up)
    else:
        h = F.linear(F.linear(x, down), up)
    return output + h * weights.to(h.device, h.dtype).view(-1, *[1] * (h.dim() - 1))


@dataclass
class SPMGate(GuidanceTensors, SamplingGuidance):
    """SPM's adapter gated per prompt at sampling time: the UNet runs with up(down(x)) * scale * m ** power
    added to each target layer, m from ``gate_weights`` (both CFG halves of an image share its m, as
    the official pipeline applies one weight to the whole UNet, infer_spm.py:142-153).

    Args: concepts (the erased ones), metric (clipcos_tokenuni, the official default, infer_spm.py:202),
    power (2: the official code scales both factors by m), scale (alpha / rank), sha256 (of the tensors).
    """

    concepts: list[str] = field(default_factory=list)
    metric: str = "clipcos_tokenuni"
    power: float = 2.0
    scale: float = 1.0
    sha256: str = ""

    TENSORS_FILE, KIND = "igmu_spm.safetensors", "the SPM gate's adapter"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise IGMUError(f"unknown SPM gate metric '{self.metric}': choose one of {', '.join(METRICS)}")
        if not self.concepts or not all(isinstance(c, str) and c.strip() for c in self.concepts):
            raise IGMUError("the SPM gate needs its non-empty concepts")
        self._tensors: dict[str, torch.Tensor] | None = None

    def to_config(self) -> dict:
        return {"class_path": f"{__name__}.{type(self).__qualname__}", "init_args": asdict(self)}

    def prepare(self, sampler, prompts: list[str], cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Note the prompts behind ``cond``: the gate counts their tokens shared with the concept."""
        self._batch = (list(prompts), cond)
        return cond, uncond

    def weights(self, sampler, cond: torch.Tensor) -> torch.Tensor:
        prompts, prepared = getattr(self, "_batch", (None, None))
        if prepared is not cond:
            prompts = None  # embeddings with no prompts behind them (an attack's), or another batch's: similarity only
        concept_embeds = sampler.encode(list(self.concepts))
        return gate_weights(sampler.backbone.tokenizer, cond, prompts, concept_embeds, self.concepts, self.metric)

    @contextmanager
    def applied(self, unet: nn.Module, weights: torch.Tensor):
        """The adapter on ``unet``'s target layers, batch row b scaled by weights[b]."""
        tensors, handles = self.tensors, []
        try:
            for name in sorted({k.rsplit(".", 1)[0] for k in tensors}):
                hook = partial(_gated_lora, tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"], weights * self.scale)
                handles.append(unet.get_submodule(name).register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def noise(
        self, sampler, latents: torch.Tensor, t: torch.Tensor, step: int, cond: torch.Tensor, uncond: torch.Tensor
    ) -> torch.Tensor:
        m = self.weights(sampler, cond) ** self.power
        gs = sampler.settings.guidance_scale
        if gs == 1.0:
            with self.applied(sampler.backbone.unet, m):
                return sampler.unet(latents, t, encoder_hidden_states=cond).sample
        with self.applied(sampler.backbone.unet, torch.cat([m, m])):
            both = sampler.unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond]))
        eps_uncond, eps_cond = both.sample.chunk(2)
        return eps_uncond + gs * (eps_cond - eps_uncond)


class SPM(UnlearningModule):
    """Args (official values: the official repository's snoopy config.yaml and prompt.yaml):
    backbone: the model to erase from; the concept is each batch's ``prompt``.
    rank, alpha: the adapter's rank (1) and alpha (1.0): scale alpha / rank.
    negative_guidance: g of the erase target (prompt.yaml ``guidance_scale`` 1.0).
    start_guidance: CFG while sampling x_t (3, train_spm.py:187). ddim_steps: S (30).
    anchor_strength: weight of the anchoring MSE (1000). anchors: anchors per step (4).
    anchor_set: ``official`` (the contexts the official code's chunking keeps) or ``sampled``.
    dynamic_resolution: x_t at a random size from the official bucket (prompt.yaml: true; needs an
        image size >= 128: the world's 32 px model runs at its own size).
    gate_metric, gate_power: the exported gate's (``SPMGate``).
    warmup_steps, lr_cycles: cosine_with_restarts warmup (500) and cycles (3), to trainer.max_steps.
    lr: AdamW learning rate (None: 1e-4; the official optimizer is bitsandbytes' AdamW8bit).
    optimizer, lr_scheduler: replace the AdamW / the schedule (``utils.optim``).
    """

    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.AdamW, {"lr": 1e-4}  # docs/parity.md, SPM: "optimizer"

    def __init__(
        self,
        backbone: BackboneSpec,
        rank: int = 1,
        alpha: float = 1.0,
        negative_guidance: float = 1.0,
        start_guidance: float = 3.0,
        ddim_steps: int = 30,
        anchor_strength: float = 1000.0,
        anchors: int = 4,
        anchor_set: Literal["official", "sampled"] = "official",
        dynamic_resolution: bool = False,
        gate_metric: str = "clipcos_tokenuni",
        gate_power: float = 2.0,
        warmup_steps: int = 500,
        lr_cycles: int = 3,
        lr: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if ddim_steps < 2:
            raise IGMUError(f"SPM ddim_steps must be >= 2 (k ~ U{{1..S-1}}), got {ddim_steps}")
        if anchors < 1 or anchor_set not in ("official", "sampled"):
            raise IGMUError(f"SPM needs anchors >= 1 and anchor_set official or sampled, got {anchors}, '{anchor_set}'")
        if gate_metric not in METRICS:
            raise IGMUError(f"unknown SPM gate_metric '{gate_metric}': choose one of {', '.join(METRICS)}")
        if alpha <= 0:
            raise IGMUError(f"SPM alpha must be > 0, got {alpha}")
        self.rank, self.alpha = rank, alpha  # attach_adapters runs inside the base's __init__
        super().__init__(backbone, ["lora"], lr, export_dir, optimizer, lr_scheduler)
        self.save_hyperparameters()
        self.eta, self.start_guidance, self.ddim_steps = negative_guidance, start_guidance, ddim_steps
        self.anchor_strength, self.n_anchors, self.anchor_set = anchor_strength, anchors, anchor_set
        self.dynamic_resolution, self.gate_metric, self.gate_power = dynamic_resolution, gate_metric, gate_power
        self.warmup_steps, self.lr_cycles = warmup_steps, lr_cycles
        self.concepts: list[str] = []  # the gate's, in the order training first saw them

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.dynamic_resolution:
            self.random_size()  # refuse a model too small for the bucket before the first step

    def attach_adapters(self, backbone) -> None:
        backbone.attach(LoRA(targets=TARGETS, rank=self.rank, alpha=self.alpha, name=ADAPTER))

    def default_lr_scheduler(self, optimizer: torch.optim.Optimizer):
        from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

        total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else None
        if total is None:
            raise IGMUError("SPM's cosine_with_restarts schedule ends at trainer.max_steps: set trainer.max_steps")
        return get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, self.warmup_steps, total, self.lr_cycles)

    # --- x_t, anchors, loss ---------------------------------------------------------------------
    def official_ddim(self, steps: int) -> DDIMScheduler:
        """The official DDIM (model_util.py:233-240: steps_offset 0, alpha_T 1) on the model's betas."""
        scheduler = DDIMScheduler.from_config(self.backbone.scheduler.config, steps_offset=0, set_alpha_to_one=True,
                                              clip_sample=False, timestep_spacing="leading")  # fmt: skip
        scheduler.set_timesteps(steps, device=self.backbone.device)
        return scheduler

    def random_size(self) -> tuple[int, int]:
        """(height, width): the official bucket, multiples of 64 in [size / 2, size) (train_util.py:636-648)."""
        size = self.backbone.image_size
        lo, hi = size // 2 // 64, size // 64
        if hi <= lo:
            raise IGMUError(f"SPM dynamic_resolution needs an image size >= 128, the model's is {size}: set it false")
        return int(torch.randint(lo, hi, ()) * 64), int(torch.randint(lo, hi, ()) * 64)

    def sample_xt(self, c: torch.Tensor, null: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k DDIM steps of ``ddim_steps`` from noise with CFG ``start_guidance``, the SPM on
        (train_spm.py:171-188), and the query timestep: the 1000-step schedule's entry
        int(k * 1000 / S) (train_spm.py:190-194)."""
        n = len(c)
        height, width = self.random_size() if self.dynamic_resolution else (None, None)
        sampler = Sampler(self.backbone, SamplerSettings(steps=self.ddim_steps, guidance_scale=self.start_guidance,
                                                         height=height, width=width))  # fmt: skip
        sampler.guidance = None  # plain CFG with the adapter at weight 1
        scheduler = self.official_ddim(self.ddim_steps)
        generators = sampler.generators(torch.randint(0, 2**31 - 1, (n,)).tolist())
        with torch.no_grad():
            latents = sampler.initial_latents(generators, scheduler)
            x_t = sampler.denoise(latents, c, null, scheduler, generators, stop_after=k)
        total = self.backbone.scheduler.config.num_train_timesteps
        t = self.official_ddim(total).timesteps[int(k * total / self.ddim_steps)]
        return x_t, t.repeat(n).to(x_t.device)

    def anchor_contexts(self, c: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """(n * anchors, L, D): per concept, ``sample_anchors``; ``official`` keeps what the official
        code's predict_noise at scale 1 keeps of [null, a1, null, a2, ...]: its second half
        (train_spm.py:239-252, sampling.py:24-25, train_util.py:161-176)."""
        out = []
        for ci, ni in zip(c, null):
            anchors = sample_anchors(ci, self.n_anchors)
            if self.anchor_set == "official":
                anchors = torch.stack([x for a in anchors for x in (ni, a)])[self.n_anchors :]
            out.append(anchors)
        return torch.cat(out)

    def spm_loss(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, null: torch.Tensor,
                 anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """(total, erase, anchoring): prompt.py:151-155 and 171-178."""
        unet = self.backbone.unet
        e_null, e_c = self.teacher(x_t, t, null).sample, self.teacher(x_t, t, c).sample
        target = e_null - self.eta * (e_c - e_null)
        erase = F.mse_loss(unet(x_t, t, encoder_hidden_states=c).sample.float(), target.float())
        per = len(anchors) // len(x_t)
        x_a, t_a = x_t.repeat_interleave(per, dim=0), t.repeat_interleave(per)
        anchored = unet(x_a, t_a, encoder_hidden_states=anchors).sample
        anchoring = F.mse_loss(anchored.float(), self.teacher(x_a, t_a, anchors).sample.float())
        return erase + self.anchor_strength * anchoring, erase, anchoring

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        concepts = list(batch["prompt"])
        if not all(c.strip() for c in concepts):
            raise IGMUError("SPM needs a non-empty concept to erase: the data's prompts hold an empty one")
        self.concepts.extend(c for c in dict.fromkeys(concepts) if c not in self.concepts)
        with torch.no_grad():
            c = self.backbone.encode_prompts(concepts)
            null = self.backbone.encode_prompts([""] * len(concepts))
        k = int(torch.randint(1, self.ddim_steps, ()))  # train_spm.py:150-152
        x_t, t = self.sample_xt(c, null, k)
        loss, erase, anchoring = self.spm_loss(x_t, t, c, null, self.anchor_contexts(c, null))
        n = len(concepts)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({"train/erase": erase, "train/anchoring": anchoring}, batch_size=n)
        return loss

    def resume_state(self) -> dict:
        return {"concepts": list(self.concepts)}

    def load_resume_state(self, state: dict) -> None:
        self.concepts = list(state.get("concepts", []))

    # --- export -------------------------------------------------------------------------------
    def gate(self) -> SPMGate:
        """The trained adapter as an ``SPMGate`` for the concepts seen in training."""
        if not self.concepts:
            raise IGMUError("SPM's gate needs the concepts it erased: run at least one training step before exporting")
        tensors, scales = {}, set()
        for name, layer in self.backbone.unet.named_modules():
            if hasattr(layer, "lora_A") and ADAPTER in layer.lora_A:
                tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = (
                    layer.lora_A[ADAPTER].weight,
                    layer.lora_B[ADAPTER].weight,
                )
                scales.add(layer.scaling[ADAPTER])
        return SPMGate(list(self.concepts), self.gate_metric, self.gate_power, scales.pop()).with_tensors(tensors)

    def save_model_folder(self, path: Path) -> Path:
        """The base weights (the adapter switched off does not fold in), the gate and its tensors."""
        gate = self.gate()
        with self.backbone.adapters_disabled():
            plain = merged_backbone(self.backbone)
        plain.guidance = gate
        return plain.save_pretrained(path)
