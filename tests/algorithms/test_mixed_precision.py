"""Every trainable algorithm takes optimizer steps under bf16-mixed and under 16-mixed (fp16 autocast
with a GradScaler: Lightning's GPU recipe, here on the CPU through its plugin), and keeps fp32,
finite weights that moved only where the algorithm trains."""


import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins import MixedPrecision

from igmu_lightning.modules.params import select_parameters
from tests.conftest import build_algorithm


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", ["esd", "ca", "fmn", "salun"])
def test_trainable_algorithms_step_under_mixed_precision(name, precision, tiny_spec, tmp_path):
    module, data, allowed = build_algorithm(name, tiny_spec, tmp_path)
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
