"""An unlearning algorithm trains under DDP (ddp_spawn, 2 CPU processes, gloo) and in bf16-mixed."""

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from igmu_lightning.algorithms import ESD
from igmu_lightning.data import PromptData


def test_esd_trains_with_ddp_spawn_on_two_cpu_processes_in_bf16_mixed(tiny_spec, tmp_path):
    module = ESD(tiny_spec, lr=1e-2, ddim_steps=3, export_dir=str(tmp_path / "out"))
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
    module = ESD(tiny_spec, ddim_steps=3)
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

    module = ESD(tiny_spec)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())  # Lightning builds FSDP only on GPUs
    with pytest.raises(IGMUError, match="do not run under FSDP.*use strategy ddp"):
        module.setup("fit")
    module._trainer = SimpleNamespace(strategy=SimpleNamespace())
    module.setup("fit")


class RankDigest(Callback):
    """Each rank writes a digest of its backbone's weights when training ends (ddp_spawn returns
    only rank 0's weights to the test)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, p in sorted(pl_module.backbone.named_parameters()):
            digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
        Path(self.folder, f"rank{trainer.global_rank}.txt").write_text(digest.hexdigest())


@pytest.mark.parametrize("name", ["fmn", "salun"])
def test_fmn_and_salun_train_under_ddp_and_their_ranks_stay_identical(name, tiny_spec, tmp_path):
    """SalUn's saliency sums gradients over every rank's forget batches before its top-k: a
    per-rank mask would move different entries on each rank and split the model."""
    from tests.conftest import build_algorithm as build

    module, data, _ = build(name, tiny_spec, tmp_path)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      callbacks=[RankDigest(str(tmp_path))])  # fmt: skip
    trainer.fit(module, data)
    assert any(not torch.equal(p, before[n]) for n, p in module.backbone.named_parameters())
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text()
