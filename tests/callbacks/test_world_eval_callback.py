import csv
from pathlib import Path

import pytest
import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from igmu_lightning.backbone import TinySD
from igmu_lightning.callbacks import WorldEvalCallback
from igmu_lightning.evaluation.world_eval import WorldEvaluation
from igmu_lightning.loggers import WandbLogger
from igmu_lightning.modules import TextToImage
from igmu_lightning.sampling import SamplerSettings
from igmu_lightning.world import WorldData
from tests.conftest import ROOT


def test_callback_scores_the_current_model_and_logs_to_wandb(tmp_path):
    callback = WorldEvalCallback(
        "object", detectors=str(ROOT / "checkpoints/world/detectors"), prompts_per_class=2, sampler=SamplerSettings(steps=2)
    )
    logger = WandbLogger(save_dir=str(tmp_path / "logs"), offline=True)
    module = TextToImage(TinySD(image_size=32), trainable=["xattn"], lr=1e-2)
    data = WorldData(train_size=16, val_size=4, test_size=0, batch_size=4)
    trainer = Trainer(max_steps=2, logger=logger, callbacks=[callback], enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, val_check_interval=2)  # fmt: skip
    try:
        trainer.fit(module, data)
        run_dir = Path(logger.experiment.dir)
    finally:
        wandb.finish()
    scored = callback.last
    assert set(scored) == {"original", "current"}
    assert scored["current"]["aspects"]["efficiency"]["params_changed"]["value"] > 0  # training moved weights
    # the logged numbers are the trained model's: an evaluation run apart on it gives the same values
    settings = dict(detectors=str(ROOT / "checkpoints/world/detectors"), prompts_per_class=2, sampler=SamplerSettings(steps=2))
    model = module.backbone.eval()
    apart = WorldEvaluation("object", cache_dir=None, **settings).compare(TinySD(image_size=32).build().eval(),
                                                                       [("current", model)], seed=0)  # fmt: skip
    for aspect, metric in (("forgetting", "target_rate"), ("preservation", "retain_accuracy")):
        got, want = (s["current"]["aspects"][aspect][metric] for s in (scored, apart.methods))
        assert (got["value"], got["n"]) == pytest.approx((want["value"], want["n"]))
    media = [p.name for p in run_dir.rglob("*") if p.is_file()]
    assert any(name.endswith(".table.json") for name in media) and any(name.endswith(".png") for name in media)


def test_callback_under_ddp_shares_the_prompts_and_logs_the_one_process_metrics(tmp_path):
    """Two ddp_spawn processes each score half of every prompt set; rank 0 logs the synced
    metrics, which equal one process scoring everything (lr 0: the model stays the original)."""
    settings = dict(detectors=str(ROOT / "checkpoints/world/detectors"), prompts_per_class=2, sampler=SamplerSettings(steps=2))
    module = TextToImage(TinySD(image_size=32), trainable=["xattn"], lr=0.0)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=CSVLogger(tmp_path),
                      callbacks=[WorldEvalCallback("object", **settings)], enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, val_check_interval=1)  # fmt: skip
    trainer.fit(module, WorldData(train_size=8, val_size=4, test_size=0, batch_size=2))
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        logged = {k: float(v) for row in csv.DictReader(f) for k, v in row.items() if k.startswith("val/eval/") and v}
    model = TinySD(image_size=32).build().eval()
    one = WorldEvaluation("object", cache_dir=None, **settings).compare(model, [("current", model)], seed=0)
    expected = {f"val/eval/{a}.{m}": v["value"] for a, ms in one.methods["current"]["aspects"].items() for m, v in ms.items()}
    assert logged.keys() == expected.keys() and "val/eval/forgetting.target_rate" in logged
    assert logged == pytest.approx(expected, rel=1e-4, abs=1e-5)
