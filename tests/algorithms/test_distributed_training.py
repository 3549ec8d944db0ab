"""An unlearning algorithm trains under DDP (ddp_spawn, 2 CPU processes, gloo) and in bf16-mixed."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import ESD
from igmu_lightning.data import PromptData


def test_esd_trains_with_ddp_spawn_on_two_cpu_processes_in_bf16_mixed(tiny_spec, tmp_path):
    module = ESD(tiny_spec, concept="a cat", lr=1e-2, ddim_steps=3, export_dir=str(tmp_path / "out"))
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", precision="bf16-mixed", max_steps=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, PromptData(["a cat"], batch_size=2, steps_per_epoch=2))
    # ddp_spawn hands the trained weights of rank 0 back to this process
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2." in n for n in changed)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.backbone.parameters())
    assert (tmp_path / "out" / "model_index.json").is_file()  # rank 0 exported, once


def test_bf16_mixed_keeps_the_loss_close_to_fp32(tiny_spec):
    module = ESD(tiny_spec, concept="a cat", ddim_steps=3)
    batch = {"prompt": ["a cat", "a cat"]}
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None), torch.no_grad():
            module.log = lambda *a, **k: None
            losses[name] = module.training_step(batch, 0).float()
    assert torch.isfinite(losses["bf16"]) and abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"] + 1e-4


def test_fsdp_is_refused_with_the_reason_and_the_fix(tiny_spec):
    from lightning.pytorch.strategies import FSDPStrategy

    from igmu_lightning.errors import IGMUError

    module = ESD(tiny_spec, concept="a cat")
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())  # Lightning builds FSDP only on GPUs
    with pytest.raises(IGMUError, match="do not run under FSDP.*use strategy ddp"):
        module.setup("fit")
    module._trainer = SimpleNamespace(strategy=SimpleNamespace())
    module.setup("fit")
