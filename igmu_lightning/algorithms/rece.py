"""RECE, Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024): a UCE edit, then epochs
that each find in closed form the embedding the edited model still turns into the concept and
erase that too. Official code: CharlesGong12/RECE, ``train.py`` (nudity), ``train_artists.py``,
``train_object.py``, with ``utils/embedding_calculation/close_form_emb.py`` (``regzero``) and
``erase_methods/uce.py`` (``edit_model_adversarial``); docs/parity.md, section RECE.

Start: the UCE edit of every attn2 to_k / to_v (this module's UCE arguments). Then per epoch:

    M  = (sum_l W'_l^T W'_l + lam_r I)^-1 (sum_l W'_l^T W_l)      over every attn2 to_k and to_v
    c' = M c                                                          each of the 77 rows c of each erase text
    W' <- (lam W' + s_e sum (W' g) c'^T + s_p sum (W' p) p^T)(lam I + s_e sum c' c'^T + s_p sum p p^T)^-1

W' the edited weights, W the unedited ones, g the guide's 77 rows position by position, p the 77 rows
of every preserve text and of "". ``select: best`` keeps, of the UCE start and each epoch, the one a
judge finds the concept least often in on validation images (the official nudity scripts' NudeNet
rate); ``last`` (the default) keeps the last epoch. All float64; one training step on ``StepData``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from igmu_lightning.algorithms.uce import UCE, closed_form_edit
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.detectors.spec import JudgeSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler, SamplerSettings, to_uint8
from igmu_lightning.utils.text import expand_braces, read_texts


class RECE(UCE):
    """Args (besides UCE's, passed on to make the starting edit: erase, guide, preserve,
    preserve_file, preserve_column, lam, erase_scale, preserve_scale, tokens, export_dir; see ``UCE``):
    regular_scale: lam_r of c' (0.1 nudity, 1e-3 art and hard objects, 0.1 easy objects).
    epochs: RECE epochs after the UCE edit (3 nudity, 1 art and objects).
    rece_lam, rece_erase_scale, rece_preserve_scale: lam, s_e, s_p of each epoch's edit (0.1, 1, 0.1).
    select: ``last`` keeps the last epoch; ``best`` the lowest judged rate among the UCE start and
        the epochs (the earlier on a tie), as train.py keeps the lowest NudeNet rate.
    judge, judge_target: what scores a validation image (``judges.SavedDetector``: the world
        detector of the target's family; ``judges.NudeNet``) and its class meaning "concept drawn".
    validation_prompts, validation_file, validation_column: the validation prompts ("{a,b}"
        alternatives expand; a CSV column or one prompt a line); image i has seed validation_seed + i.
    validation_sampler: their sampling settings.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        erase: list[str],
        regular_scale: float = 0.1,
        epochs: int = 3,
        rece_lam: float = 0.1,
        rece_erase_scale: float = 1.0,
        rece_preserve_scale: float = 0.1,
        select: Literal["last", "best"] = "last",
        judge: JudgeSpec | None = None,
        judge_target: str | None = None,
        validation_prompts: list[str] | None = None,
        validation_file: str | None = None,
        validation_column: str = "prompt",
        validation_sampler: SamplerSettings | None = None,
        validation_seed: int = 0,
        **uce_args,
    ) -> None:
        if epochs < 1:
            raise IGMUError(f"RECE epochs must be >= 1, got {epochs}")
        if regular_scale <= 0:
            raise IGMUError(
                f"RECE regular_scale must be > 0 (it keeps sum W'^T W' + lam_r I invertible), got {regular_scale}"
            )
        if select not in ("last", "best"):
            raise IGMUError(f"unknown RECE select '{select}': choose last or best")
        if select == "best" and (judge is None or not judge_target or not (validation_prompts or validation_file)):
            raise IGMUError("RECE select: best needs judge, judge_target and validation_prompts or validation_file")
        super().__init__(backbone, erase, **uce_args)
        self.regular_scale, self.epochs, self.select = regular_scale, epochs, select
        self.rece_lam, self.rece_s_e, self.rece_s_p = rece_lam, rece_erase_scale, rece_preserve_scale
        self.judge_spec, self.judge_target = judge, judge_target
        self.validation_entries, self.validation_file, self.validation_column = (
            list(validation_prompts or []),
            validation_file,
            validation_column,
        )
        self.validation_sampler, self.validation_seed = validation_sampler or SamplerSettings(), validation_seed
        self._judge = None
        self.kept_epoch: int | None = None  # -1: the UCE start was kept

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.select == "best":  # a missing judge or prompt file stops the run before the edit
            self.validation_prompts()
            self.judge()

    # --- the closed form -----------------------------------------------------------------------
    def rece_texts(self) -> list[str]:
        """Preserve texts of the epochs' edits: the start's and "" (``retain_texts`` of every script)."""
        return list(dict.fromkeys(self.preserve + [""]))

    @torch.no_grad()
    def adversarial_embeddings(self) -> torch.Tensor:
        """c' = M c for the 77 rows of every erase text, M from the current and unedited K/V."""
        params = {n: p for n, p in self.backbone.unet.named_parameters() if n in self.originals}
        width = next(iter(params.values())).shape[1]
        gram = self.regular_scale * torch.eye(width, dtype=torch.float64, device=self.device)
        cross = torch.zeros_like(gram)
        for name, edited in params.items():
            edited, original = edited.double(), self.originals[name].to(self.device).double()
            gram += edited.T @ edited
            cross += edited.T @ original
        m = torch.linalg.solve(gram, cross)
        c = torch.cat([self._embed(text)[0] for text in self.erase])
        return c @ m.T

    @torch.no_grad()
    def rece_epoch(self) -> None:
        """One epoch: c' from the current weights, then the UCE-style edit of every K/V from W'."""
        c = self.adversarial_embeddings()
        g = torch.cat([self._embed(text)[0] for text in self.guide])
        p = torch.cat([self._embed(text)[0] for text in self.rece_texts()])
        for name, param in self.backbone.unet.named_parameters():
            if name in self.originals:
                param.copy_(
                    closed_form_edit(param, c, g, p, self.rece_lam, self.rece_s_e, self.rece_s_p).to(param.dtype)
                )

    # --- keeping the best epoch ----------------------------------------------------------------
    def validation_prompts(self) -> list[str]:
        texts = [text for entry in self.validation_entries for text in expand_braces(entry)]
        if self.validation_file:
            texts += read_texts(self.validation_file, self.validation_column)
        return texts

    def judge(self):
        if self._judge is None:
            judge = self.judge_spec.build()
            if self.judge_target not in judge.class_names:
                raise IGMUError(f"RECE judge_target '{self.judge_target}' is not a class of the judge "
                                f"({', '.join(judge.class_names)})")  # fmt: skip
            self._judge = judge
        if isinstance(self._judge, nn.Module):
            self._judge.to(self.device).eval()
        return self._judge

    @torch.no_grad()
    def validation_rate(self) -> float:
        """Share of the validation images in which the judge finds ``judge_target``."""
        prompts, judge = self.validation_prompts(), self.judge()
        was_training = self.backbone.training
        self.backbone.eval()
        seeds = [self.validation_seed + i for i in range(len(prompts))]
        images = to_uint8(Sampler(self.backbone, self.validation_sampler).generate(prompts, seeds).images).float() / 255
        self.backbone.train(was_training)
        found = judge.predict(images.to(self.device)).cpu() == judge.class_names.index(self.judge_target)
        return found.float().mean().item()

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.backbone.unet.named_parameters() if n in self.originals}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.apply_edit()  # the UCE start, from the unedited weights
        best = (self.validation_rate(), -1, self.snapshot()) if self.select == "best" else None
        for epoch in range(self.epochs):
            self.rece_epoch()
            if best is not None:
                rate = self.validation_rate()
                self.log(f"train/validation_rate_epoch_{epoch}", rate)
                if rate < best[0]:
                    best = (rate, epoch, self.snapshot())
        self.kept_epoch = self.epochs - 1
        if best is not None:
            self.log("train/validation_rate_kept", best[0])
            self.kept_epoch = best[1]
            params = dict(self.backbone.unet.named_parameters())
            with torch.no_grad():
                for name, tensor in best[2].items():
                    params[name].copy_(tensor)
        self.log("train/kept_epoch", float(self.kept_epoch))
        self.trainer.should_stop = True
