"""The base of every unlearning algorithm: the shared backbone, the trainable subset, a frozen
teacher that costs no second UNet, and teacher-guided sampling.

The frozen teacher: before training, the module keeps a copy of the *trained* tensors only
(``self.originals``). The teacher is the same UNet called through ``torch.func.functional_call``
with those originals swapped in, so its other weights, frozen and shared, are never copied. When
only cross-attention is trained (ESD-x) the teacher costs ~5% of a UNet instead of 100%. A method
that trains the text encoder gets its teacher the same way (``teacher_encode``); the tensors of
attached adapters have no originals: the teacher runs with the adapters switched off."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.func import functional_call

from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.base import BackboneModule
from igmu_lightning.sampling import Sampler, SamplerSettings


class UnlearningModule(BackboneModule):
    """Args:
    backbone: the model to unlearn from.
    trainable: preset names or regexes (``xattn``, ``noxattn``, ``unet``, ``text_encoder``...).
    lr: learning rate of the algorithm's official optimizer (``OPTIMIZER``); None: its official lr.
    export_dir: the unlearned model is saved there (diffusers folder) at the end of fit.
    optimizer, lr_scheduler, weight_decay: see ``BackboneModule`` (and ``utils.optim`` for which wins).
    """

    def __init__(self, backbone: BackboneSpec, trainable: list[str], lr: float | None, export_dir: str | None = None,
                 optimizer=None, lr_scheduler=None, weight_decay: float | None = None) -> None:  # fmt: skip
        settings = {"lr": lr, "weight_decay": weight_decay}
        super().__init__(backbone, trainable, export_dir, optimizer, lr_scheduler, settings)
        # Only tensors the algorithm trains are kept (by name within their component): the rest of
        # the teacher is the live model. Adapter tensors are left out: the teacher switches them off.
        self.originals = self._trained_originals("unet")
        self.text_originals = self._trained_originals("text_encoder")

    def _trained_originals(self, component: str) -> dict[str, torch.Tensor]:
        adapters = {n.removeprefix(f"{component}.") for n in self.backbone.adapter_tensor_names}
        params = getattr(self.backbone, component).named_parameters()
        return {n: p.detach().clone() for n, p in params if p.requires_grad and n not in adapters}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self._trainer is not None and "fsdp" in type(self._trainer.strategy).__name__.lower():
            # FSDP re-materialises the sharded weights in its own forward hooks, which would silently
            # overwrite the originals swapped in for the teacher: its output would be the student's.
            raise IGMUError(
                "unlearning algorithms do not run under FSDP (their teacher swaps weights inside the UNet's "
                "forward): use strategy ddp, an SD v1.x UNet fits on one GPU (configs/trainer/ddp8.yaml)"
            )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.originals = {n: t.to(self.device) for n, t in self.originals.items()}
        self.text_originals = {n: t.to(self.device) for n, t in self.text_originals.items()}

    @torch.no_grad()
    def teacher(self, latents: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor):
        """The UNet as it was before unlearning (returns an object with ``.sample``, like the UNet)."""
        with self.backbone.adapters_disabled():
            out = functional_call(self.backbone.unet, self.originals, (latents, t), {"encoder_hidden_states": encoder_hidden_states}, strict=False)
        return SimpleNamespace(sample=out.sample)

    @torch.no_grad()
    def teacher_encode(self, prompts: list[str]) -> torch.Tensor:
        """``encode_prompts`` of the text encoder as it was before unlearning: the teacher's
        conditioning when the text encoder is trained (or carries adapters); else the live encoder's."""
        bb = self.backbone
        if not self.text_originals and not any(a.component == "text_encoder" for a in bb.adapters):
            return bb.encode_prompts(prompts)
        with bb.adapters_disabled():
            return functional_call(bb.text_encoder, self.text_originals, (bb.tokenize(prompts),), strict=False)[0]

    def delta_tensors(self) -> dict[str, torch.Tensor]:
        """Trained tensors that moved from their originals (a SalUn mask or a UCE edit may leave some)."""
        return {
            name: tensor
            for name, tensor in super().delta_tensors().items()
            if not (name.startswith("unet.") and name[5:] in self.originals and torch.equal(tensor.detach(), self.originals[name[5:]].to(tensor.device)))
        }

    def teacher_sampler(self, settings: SamplerSettings) -> Sampler:
        """Samples the model as it was before unlearning: teacher UNet and teacher text encoder."""
        return Sampler(self.backbone, settings, unet=self.teacher, encode=self.teacher_encode)
