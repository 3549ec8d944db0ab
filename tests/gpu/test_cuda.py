"""Checks that need a CUDA device (skipped without one; CI has none). Run them on a GPU machine with
``bash scripts/gpu_checks.sh`` (docs/gpu-checks.md): real 16-mixed training with its GradScaler,
DDP over NCCL, and the sampler's images on the GPU against the CPU's."""

import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.modules.params import select_parameters
from igmu_lightning.sampling import Sampler, SamplerSettings
from tests.conftest import build_algorithm

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("name", ["esd", "ca", "fmn", "salun"])
def test_trainable_algorithms_step_on_cuda(name, precision, tiny_spec, tmp_path):
    module, data, allowed = build_algorithm(name, tiny_spec, tmp_path)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    trainer = Trainer(accelerator="cuda", devices=1, precision=precision, max_steps=4, gradient_clip_val=1.0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    if precision == "16-mixed":  # the real fp16 recipe, not the CPU's bf16 fallback
        assert trainer.precision_plugin.scaler is not None
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p.cpu(), before[n].cpu())}
    assert changed and changed <= set(select_parameters(module.backbone, [allowed])), changed
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.backbone.parameters())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs 2 GPUs")
def test_ddp_over_nccl_ends_with_the_same_weights_on_both_ranks(tiny_spec, tmp_path):
    module, data, _ = build_algorithm("salun", tiny_spec, tmp_path)
    trainer = Trainer(accelerator="cuda", devices=2, strategy="ddp_spawn", max_steps=3, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)  # SalUn sums its saliency over ranks with an NCCL all-reduce
    assert any(p.requires_grad for p in module.parameters())


def test_sampler_images_on_cuda_match_the_cpu(tiny_spec):
    settings = SamplerSettings(steps=4)
    cpu = Sampler(tiny_spec.build(), settings).sample_batch(["a red circle", "a cat"], [0, 1])
    gpu = Sampler(tiny_spec.build().to("cuda"), settings).sample_batch(["a red circle", "a cat"], [0, 1])
    assert gpu.device.type == "cpu" and (gpu - cpu).abs().max() < 2 / 255
