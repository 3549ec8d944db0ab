"""Every trainable algorithm takes optimizer steps under bf16-mixed and under 16-mixed (fp16 autocast
with a GradScaler: Lightning's GPU recipe, here on the CPU through its plugin), and keeps fp32,
finite weights that moved only where the algorithm trains."""

from dataclasses import replace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins import MixedPrecision

from igmu_lightning.algorithms import ESD, FMN, ConceptAblation, SalUn
from igmu_lightning.data import PromptData, WorldForgetRetain
from igmu_lightning.modules.params import select_parameters

WORLD = {"n_forget": 4, "n_retain": 4, "image_size": 16, "batch_size": 2, "steps_per_epoch": 4}


def build(name: str, spec, tmp_path):
    """(module, data, the parameter names it may change) for one algorithm on the tiny backbone."""
    if name == "esd":
        module = ESD(spec, concept="a cat", lr=1e-2, ddim_steps=2)
        return module, PromptData(["a cat"], batch_size=2, steps_per_epoch=4), "xattn"
    if name == "ca":
        module = ConceptAblation(spec, target="triangle", anchor="square", anchor_prompts=["a red square"],
                                 images_per_prompt=2, generation_batch_size=2, anchor_dir=str(tmp_path / "anchors"),
                                 prior_weight=1.0, lr=1e-2)  # fmt: skip
        module.sampling = replace(module.sampling, steps=2)  # quick anchors
        return module, PromptData(["ignored"], batch_size=2, steps_per_epoch=4), "xattn_kv"
    if name == "fmn":
        return FMN(spec, concept="triangle", trainable="xattn", lr=1e-2), WorldForgetRetain("object", **WORLD), "xattn"
    module = SalUn(spec, pseudo_words={"triangle": "square"}, lr=1e-2, mask_batches=1)
    return module, WorldForgetRetain("object", **WORLD), "unet"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", ["esd", "ca", "fmn", "salun"])
def test_trainable_algorithms_step_under_mixed_precision(name, precision, tiny_spec, tmp_path):
    module, data, allowed = build(name, tiny_spec, tmp_path)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    # Trainer(precision="16-mixed") on a CPU silently falls back to bf16; the plugin keeps fp16 + scaler
    plugin = MixedPrecision(precision, "cpu")
    trainer = Trainer(accelerator="cpu", plugins=[plugin], max_steps=4, gradient_clip_val=1.0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert (plugin.scaler is not None) == (precision == "16-mixed")
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(select_parameters(module.backbone, [allowed])), changed
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.backbone.parameters())
