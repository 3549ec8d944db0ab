from pathlib import Path

import wandb
from lightning.pytorch import Trainer

from igmu_lightning.backbone import TinySD
from igmu_lightning.callbacks import WorldEvalCallback
from igmu_lightning.logging import WandbLogger
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
    assert 0 <= scored["current"]["aspects"]["forgetting"]["target_rate"]["value"] <= 1
    media = [p.name for p in run_dir.rglob("*") if p.is_file()]
    assert any(name.endswith(".table.json") for name in media) and any(name.endswith(".png") for name in media)
