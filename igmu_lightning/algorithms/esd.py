"""ESD, Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

Fine-tune eps_theta so that, for the concept c, it predicts the frozen model's negatively guided
noise:  L = || eps_theta(x_t, c, t) - [eps*(x_t, 0, t) - eta (eps*(x_t, c, t) - eps*(x_t, 0, t))] ||^2
where x_t comes from running DDIM steps (CFG ``start_guidance``) from noise and t is the query
timestep, by ``timestep_mapping``:
- ``aligned``: k ~ U{0..ddim_steps-1} steps are run and t is the timestep x_t sits at (the next one
  to denoise), the consistent form of the 2024/2025 diffusers codes' "k steps from T";
- ``compvis``: the paper-era code (train-esd.py @ b8aeab6, its ddim.py): t_enc ~ U{0..S-1}; DDIM
  drops the schedule's first timestep (``timesteps[:t_start]`` with t_start = -1), so it starts from
  pure noise as if at the second one, and stops after the step whose index + 1 equals t_enc:
  S - max(t_enc, 1) steps; then t ~ U{round(1000 t_enc / S) .. round(1000 (t_enc + 1) / S) - 1}, which
  queries 39-58 timesteps noisier than where x_t sits (x_t is ~x_0 for t_enc <= 1).
The three loss predictions use no guidance. Variants: ESD-x trains cross-attention (``xattn``),
ESD-u the rest: ``u`` the paper-era set (all but attn2, time embedding and output layers), ``u-2025``
the 2025 code's (Linear/Conv layers outside attn2, no norms), ``u-all`` every tensor outside attn2.

Where the concept comes from: the batch. Each training batch is ``{"prompt": [c, ...]}`` (``PromptData``
with ``prompts: [concept]``; several concepts there are erased together, one per batch item), so
the data config names what is erased and the module how."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import SamplerSettings

VARIANTS = {
    "x": ["xattn"],
    "u": ["noxattn_compvis"],
    "u-2025": ["noxattn_2025"],
    "u-all": ["noxattn"],
    "full": ["unet"],
    "x-strict": ["xattn_kv"],
}


class ESD(UnlearningModule):
    """Args:
    backbone: the model to erase from. The concept (the official code's ``prompt``, e.g. "nudity")
        is each batch's ``prompt``: see the module docstring.
    erase_from: optional c_f; the student sees c_f and the base term uses eps*(x_t, c_f).
    xt_prompt: what x_t is sampled with when ``erase_from`` is set: ``concept`` (the 2024 code) or
        ``erase_from`` (the 2025 code).
    variant: x / u (paper-era ESD-u) / u-2025 / u-all / full / x-strict (attn2 to_k, to_v only).
    negative_guidance: eta (paper-era and 2024 code 1.0). The 2025 code's default 2.0 comes with
        its base term eps*(x_t, c) instead of eps*(x_t, 0): the same target as eta 1.0 here.
    start_guidance: CFG scale while sampling x_t (3 in both codes).
    ddim_steps: DDIM steps of the partial sampling (50).
    sample_with: which model samples x_t: ``frozen`` (2025 code) or ``trained`` (paper-era code).
    timestep_mapping: ``aligned`` or ``compvis`` (the paper-era code's, see above).
    lr: Adam learning rate (None: 1e-5, the paper-era code's; 2025 code 5e-5).
    optimizer, lr_scheduler: replace the official Adam / the constant lr (``utils.optim``: then leave lr unset).
    """

    OPTIMIZER, OPTIMIZER_DEFAULTS = torch.optim.Adam, {"lr": 1e-5}  # docs/parity.md, ESD: "optimizer, lr"
    VARIANTS = VARIANTS  # the trained sets by variant name (AdvUnlearn's: the text encoder's layers)

    def __init__(
        self,
        backbone: BackboneSpec,
        erase_from: str | None = None,
        xt_prompt: Literal["concept", "erase_from"] = "concept",
        variant: Literal["x", "u", "u-2025", "u-all", "full", "x-strict"] = "x",
        negative_guidance: float = 1.0,
        start_guidance: float = 3.0,
        ddim_steps: int = 50,
        sample_with: Literal["frozen", "trained"] = "frozen",
        timestep_mapping: Literal["aligned", "compvis"] = "aligned",
        lr: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if variant not in self.VARIANTS:
            raise IGMUError(f"unknown {type(self).__name__} variant '{variant}': choose one of {', '.join(self.VARIANTS)}")
        if timestep_mapping not in ("aligned", "compvis"):
            raise IGMUError(f"unknown ESD timestep_mapping '{timestep_mapping}': choose aligned or compvis")
        if xt_prompt not in ("concept", "erase_from"):
            raise IGMUError(f"unknown ESD xt_prompt '{xt_prompt}': choose concept or erase_from")
        super().__init__(backbone, self.VARIANTS[variant], lr, export_dir, optimizer, lr_scheduler)
        self.save_hyperparameters()
        self.erase_from = erase_from
        self.eta, self.ddim_steps, self.sample_with = negative_guidance, ddim_steps, sample_with
        self.timestep_mapping, self.xt_prompt = timestep_mapping, xt_prompt
        self.sampling = SamplerSettings(steps=ddim_steps, guidance_scale=start_guidance)

    def esd_target(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, base: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """eps*(x_t, base) - eta (eps*(x_t, c) - eps*(x_t, null)), all from the frozen teacher."""
        e_null = self.teacher(x_t, t, null).sample
        e_c = self.teacher(x_t, t, c).sample
        e_base = e_null if base is null else self.teacher(x_t, t, base).sample
        return e_base - self.eta * (e_c - e_null)

    def sample_xt(self, c: torch.Tensor, null: torch.Tensor, k: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t and its query timestep for the draw k ~ U{0..ddim_steps-1}, by ``timestep_mapping``:
        aligned runs k DDIM steps and queries x_t's own timestep; compvis takes k as t_enc."""
        if self.timestep_mapping == "compvis":
            x_t, _ = self.run_ddim(c, null, self.ddim_steps - max(k, 1), batch, start=1)
            total = self.backbone.noise_scheduler.config.num_train_timesteps
            lo, hi = round(k / self.ddim_steps * total), round((k + 1) / self.ddim_steps * total)
            return x_t, torch.randint(lo, hi, (batch,)).to(x_t.device)
        return self.run_ddim(c, null, k, batch)

    def run_ddim(
        self, c: torch.Tensor, null: torch.Tensor, k: int, batch: int, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run k DDIM steps with guidance from noise, from the schedule's step ``start``; return x_t
        and the timestep it sits at."""
        sampler = self.teacher_sampler(self.sampling)
        if self.sample_with == "trained":
            sampler.unet = self.backbone.unet
        seeds = torch.randint(0, 2**31 - 1, (batch,)).tolist()  # from the seeded global RNG
        return sampler.partial(c, null, k, seeds, start=start)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        concepts = list(batch["prompt"])
        if not all(c.strip() for c in concepts):
            raise IGMUError("ESD needs a non-empty concept to erase: the data's prompts hold an empty one")
        n = len(concepts)
        with torch.no_grad():
            c = self.backbone.encode_prompts(concepts)
            null = self.backbone.encode_prompts([""] * n)
            base = self.backbone.encode_prompts([self.erase_from] * n) if self.erase_from else null
        k = int(torch.randint(0, self.ddim_steps, ()))
        x_t, t = self.sample_xt(base if self.xt_prompt == "erase_from" and self.erase_from else c, null, k, n)
        target = self.esd_target(x_t, t, c, base, null)
        student_context = base if self.erase_from else c
        prediction = self.backbone.unet(x_t, t, encoder_hidden_states=student_context).sample
        loss = F.mse_loss(prediction.float(), target.float())
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss
