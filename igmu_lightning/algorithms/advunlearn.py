"""AdvUnlearn (Zhang et al., NeurIPS 2024, "Defensive Unlearning with Adversarial Training for
Robust Concept Erasure in Diffusion Models"; OPTML-Group/AdvUnlearn, train-scripts/AdvUnlearn.py
with utils/attack_util.py, utils/get_loss.py ``get_train_loss_retain``, utils/util.py).

A min-max on the text encoder E_phi (its encoder layers and final LayerNorm; token and position
embeddings and the UNet stay frozen), every iteration (after ``warmup_iter`` iterations of plain
ESD on the concept c):

    attack   delta <- argmin_delta || eps(x_t, E_phi([delta, c])) - eps*(x_t, E*(c)) ||^2
             (``attacks.soft_prompt``: one free word embedding after the start token, Adam lr 1e-3,
             30 steps, a fresh x_t each step; ``fast_at``: the gradient's sign)
    defence  L = || eps(x_t, E_phi([delta, c])) - [eps*(x_t, 0) - eta (eps*(x_t, c) - eps*(x_t, 0))] ||^2
               + w || eps(x_t^r, E_phi(c_r)) - eps*(x_t^r, E*(c_r)) ||^2      (retain ``reg``)

x_t is ESD's (``ESD.sample_xt``: partial DDIM with guidance ``start_guidance`` by the frozen
teacher from the concept; the retain x_t^r from each retain prompt, at the same DDIM draw), eps*
and E* are the frozen originals (``teacher``, ``teacher_encode``). Retain prompts (batch 5) are
drawn without replacement from ``retain_prompts`` / ``retain_file`` until fewer than a batch are
left, then all again (utils/prompt_dataset.py). Retain ``iter`` (the code's default) instead
runs ``retain_step`` separate Adam steps on the retain term alone after each defence step.
Optimisation is manual (the attack runs inside the step); ``docs/parity.md`` lists the settings.
``train_method: xattn`` is the official UNet option (util.py:433-436, every attn2 tensor): the
text encoder stays the original, and x_t is sampled by the trained UNet as the official ``model``
(get_loss.py:297-317) then is."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from igmu_lightning.algorithms.esd import ESD
from igmu_lightning.attacks.soft_prompt import METHODS, prefixed_ids, random_vocab_init, soft_prompt_attack, splice
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.text import expand_braces, read_texts


class AdvUnlearn(ESD):
    """Args:
    backbone: the model to erase from; the concept is each batch's ``prompt`` (``PromptData``, batch 1).
    retain_prompts: retain texts (braces expanded); retain_file / retain_column: more from a CSV
        (the official coco_object_retain.csv, column ``prompt``).
    retain_train: ``reg`` (README and paper) or ``iter`` (the code's default).
    retain_loss_w: w (README 0.3; code default 1.0). retain_batch: 5. retain_step: ``iter`` steps (1).
    train_method: ``text_encoder_full`` (README and paper: the text encoder's layers and final
        LayerNorm) or ``xattn`` (the official UNet option: every cross-attention tensor, as ESD-x).
    attack_method: ``pgd`` (Adam on the gradient) or ``fast_at`` (on its sign).
    attack_init: ``random`` (README: a random vocabulary row every attack) or ``latest`` (code
        default: the previous attack's delta; the first one random).
    attack_step, attack_lr: 30, 1e-3. adv_prompt_num: k, the soft prompt's length (1).
    adv_prompt_update_step: attack every this many iterations (1); between, the last delta is reused.
    warmup_iter: iterations of plain ESD before the first attack (200).
    accumulate_attack_grad: the official never-zeroed attack gradient (``attacks.soft_prompt``).
    prompt_length: where the prompt ends when delta is put in front: ``tokens`` (ours: the whole
        prompt) or ``words`` (the official ``len(word.split())``: "nudity", two tokens, loses "dity").
    negative_guidance, start_guidance, ddim_steps, timestep_mapping: ESD's (1, 3, 50, compvis).
    lr: Adam's (None: 1e-5). One iteration is one optimizer step in ``reg`` mode, 1 + retain_step in ``iter``.
    """

    VARIANTS = {"text_encoder_full": ["text_encoder_layers"], "xattn": ["xattn"]}  # param_choices (util.py:36-65, 433-436)

    def __init__(
        self,
        backbone: BackboneSpec,
        retain_prompts: list[str] | None = None,
        retain_file: str | None = None,
        retain_column: str = "prompt",
        retain_train: Literal["reg", "iter"] = "reg",
        retain_loss_w: float = 0.3,
        retain_batch: int = 5,
        retain_step: int = 1,
        train_method: Literal["text_encoder_full", "xattn"] = "text_encoder_full",
        attack_method: Literal["pgd", "fast_at"] = "pgd",
        attack_init: Literal["random", "latest"] = "random",
        attack_step: int = 30,
        attack_lr: float = 1e-3,
        adv_prompt_num: int = 1,
        adv_prompt_update_step: int = 1,
        warmup_iter: int = 200,
        accumulate_attack_grad: bool = True,
        prompt_length: Literal["tokens", "words"] = "tokens",
        negative_guidance: float = 1.0,
        start_guidance: float = 3.0,
        ddim_steps: int = 50,
        timestep_mapping: Literal["aligned", "compvis"] = "compvis",
        lr: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if retain_train not in ("reg", "iter"):
            raise IGMUError(f"unknown AdvUnlearn retain_train '{retain_train}': choose reg or iter")
        if attack_method not in METHODS:
            raise IGMUError(f"unknown AdvUnlearn attack_method '{attack_method}': choose one of {', '.join(METHODS)}")
        if attack_init not in ("random", "latest"):
            raise IGMUError(f"unknown AdvUnlearn attack_init '{attack_init}': choose random or latest")
        if (
            min(retain_batch, retain_step, adv_prompt_num, adv_prompt_update_step) < 1
            or min(attack_step, warmup_iter) < 0
        ):
            raise IGMUError("AdvUnlearn needs retain_batch, retain_step, adv_prompt_num, adv_prompt_update_step >= 1 and attack_step, warmup_iter >= 0")  # fmt: skip
        if train_method not in self.VARIANTS:
            raise IGMUError(f"unknown AdvUnlearn train_method '{train_method}': choose one of {', '.join(self.VARIANTS)}")
        # x_t by the official ``model``: the original UNet when the encoder trains, the trained one for xattn
        sample_with = "frozen" if train_method == "text_encoder_full" else "trained"
        super().__init__(backbone, variant=train_method, negative_guidance=negative_guidance, start_guidance=start_guidance,
                         ddim_steps=ddim_steps, sample_with=sample_with, timestep_mapping=timestep_mapping, lr=lr,
                         export_dir=export_dir, optimizer=optimizer, lr_scheduler=lr_scheduler)  # fmt: skip
        self.save_hyperparameters()
        self.automatic_optimization = False
        if not (retain_prompts or retain_file):
            raise IGMUError("AdvUnlearn needs retain prompts: give retain_prompts or retain_file (the official coco_object_retain.csv)")  # fmt: skip
        if prompt_length not in ("tokens", "words"):
            raise IGMUError(f"unknown AdvUnlearn prompt_length '{prompt_length}': choose tokens or words (the official count)")  # fmt: skip
        self.retain_entries, self.retain_file, self.retain_column = list(retain_prompts or []), retain_file, retain_column  # fmt: skip
        self.retain_train, self.w, self.retain_batch, self.retain_step = retain_train, retain_loss_w, retain_batch, retain_step  # fmt: skip
        self.attack_method, self.attack_init, self.attack_step, self.attack_lr = attack_method, attack_init, attack_step, attack_lr  # fmt: skip
        self.k, self.update_every, self.warmup = adv_prompt_num, adv_prompt_update_step, warmup_iter
        self.accumulate, self.prompt_length = accumulate_attack_grad, prompt_length
        self.delta: torch.Tensor | None = None  # the latest soft prompt (B, k, D)
        self._retain: list[str] | None = None
        self._unseen: list[int] = []

    @property
    def iteration(self) -> int:
        """Iterations done: optimizer steps (Lightning's global step), 1 + retain_step of them an iteration in ``iter``."""
        return self.global_step // (1 + self.retain_step if self.retain_train == "iter" else 1)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.retain  # a missing or empty retain_file stops the run before training

    @property
    def retain(self) -> list[str]:
        """The retain prompts: the listed ones (braces expanded), then the file's (read once)."""
        if self._retain is None:
            texts = [t for entry in self.retain_entries for t in expand_braces(entry)]
            self._retain = texts + (read_texts(self.retain_file, self.retain_column) if self.retain_file else [])
        return self._retain

    def draw_retain(self) -> list[str]:
        """``retain_batch`` prompts not yet drawn (all again once fewer than a batch are left)."""
        if len(self._unseen) < self.retain_batch:
            self._unseen = list(range(len(self.retain)))
        picks = torch.randperm(len(self._unseen))[: self.retain_batch].tolist()
        chosen = [self._unseen[i] for i in picks]
        self._unseen = [i for i in self._unseen if i not in chosen]
        return [self.retain[i] for i in chosen]

    def attack(self, concepts: list[str], c: torch.Tensor, null: torch.Tensor) -> list[float]:
        """A new soft prompt against the current encoder: the attack objective with a fresh x_t each step."""

        def objective(cond: torch.Tensor) -> torch.Tensor:
            x_t, t = self.sample_xt(c, null, int(torch.randint(0, self.ddim_steps, ())), len(concepts))
            return F.mse_loss(
                self.backbone.unet(x_t, t, encoder_hidden_states=cond).sample.float(),
                self.teacher(x_t, t, c).sample.float(),
            )

        start = (
            self.delta
            if self.attack_init == "latest" and self.delta is not None
            else random_vocab_init(self.backbone, len(concepts), self.k)
        )
        self.delta, losses = soft_prompt_attack(self.backbone, concepts, objective, start, self.attack_step, self.attack_lr, self.attack_method, self.accumulate, self.prompt_length)  # fmt: skip
        return losses

    def loss(
        self, concepts: list[str], c: torch.Tensor, null: torch.Tensor, retain: list[str] | None, k: int
    ) -> torch.Tensor:
        """ESD's loss on the (adversarial) concept, plus w times the retain term when ``retain`` is given."""
        x_t, t = self.sample_xt(c, null, k, len(concepts))
        if self.delta is None:  # warm-up: the plain concept
            student = self.backbone.encode_prompts(concepts)
        else:
            ids = prefixed_ids(self.backbone, concepts, self.k, self.prompt_length)
            student = self.backbone.encode_embeddings(splice(self.backbone.token_embeddings(ids), self.delta), ids)
        prediction = self.backbone.unet(x_t, t, encoder_hidden_states=student).sample
        loss = F.mse_loss(prediction.float(), self.esd_target(x_t, t, c, null, null).float())
        return loss + self.w * self.retain_loss(retain, k) if retain else loss

    def retain_loss(self, retain: list[str], k: int) -> torch.Tensor:
        c_r = self.teacher_encode(retain)
        x_r, t_r = self.sample_xt(c_r, self.teacher_encode([""] * len(retain)), k, len(retain))
        prediction = self.backbone.unet(x_r, t_r, encoder_hidden_states=self.backbone.encode_prompts(retain)).sample
        return F.mse_loss(prediction.float(), self.teacher(x_r, t_r, c_r).sample.float())

    def training_step(self, batch: dict, batch_idx: int) -> None:
        concepts = list(batch["prompt"])
        if not all(p.strip() for p in concepts):
            raise IGMUError("AdvUnlearn needs a non-empty concept to erase: the data's prompts hold an empty one")
        c, null = self.teacher_encode(concepts), self.teacher_encode([""] * len(concepts))
        if self.iteration >= self.warmup and (self.iteration % self.update_every == 0 or self.delta is None):
            attack_losses = self.attack(concepts, c, null)
            if attack_losses:
                self.log("train/attack_loss", attack_losses[-1], batch_size=len(concepts))
        optimizer, k = self.optimizers(), int(torch.randint(0, self.ddim_steps, ()))
        loss = self.loss(concepts, c, null, self.draw_retain() if self.retain_train == "reg" else None, k)
        self._step(optimizer, loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(concepts))
        for _ in range(self.retain_step if self.retain_train == "iter" else 0):
            self._step(optimizer, self.retain_loss(self.draw_retain(), int(torch.randint(0, self.ddim_steps, ()))))

    def _step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
