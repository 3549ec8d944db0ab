"""``LightningCLI`` for the project: class_path/init_args YAML configs, W&B by default, and a run
record (resolved config, seed, package versions, model hashes) saved beside every run's logs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from igmu_lightning.utils.io import atomic_write_json, atomic_write_text
from igmu_lightning.utils.provenance import provenance

DEFAULT_LOGGER = {"class_path": "igmu_lightning.logging.WandbLogger"}


def run_directory(trainer: Trainer) -> Path:
    """The folder of this run: where Lightning's ModelCheckpoint puts ``checkpoints/`` too."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir or trainer.default_root_dir
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(save_dir) / str(logger.name) / version
    return Path(trainer.default_root_dir)


class RunRecord(SaveConfigCallback):
    """Saves ``config.yaml`` and ``run.json`` into the run's folder and logs the resolved config as
    the W&B run config. Rank 0 only (Lightning calls ``save_config`` there)."""

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = True, **kwargs):
        super().__init__(parser, config, config_filename, overwrite, save_to_log_dir=False)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = run_directory(trainer)
        text = self.parser.dump(self.config, skip_none=False)
        atomic_write_text(run_dir / self.config_filename, text)
        hashes = pl_module.base_hashes() if hasattr(pl_module, "base_hashes") else {}
        record = {"stage": stage, "seed": self.config.get("seed_everything"), "model_hashes": hashes, **provenance()}
        atomic_write_json(run_dir / "run.json", record)
        config = yaml.safe_load(text)
        config["run"] = {k: record[k] for k in ("seed", "model_hashes", "packages")}
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class IGMUCLI(LightningCLI):
    """``train.py``: subcommands fit / validate / test / predict over any of the project's modules."""

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        # Runs without a logger keep their checkpoints under logs/, never in the shipped checkpoints/.
        defaults = {"logger": DEFAULT_LOGGER, "default_root_dir": "logs"}
        if not sys.stderr.isatty():  # in batch jobs and log files, print progress lines every 50 steps
            defaults["callbacks"] = [TQDMProgressBar(refresh_rate=50)]
        kwargs.setdefault("trainer_defaults", defaults)
        kwargs.setdefault("seed_everything_default", 0)
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunRecord,
            args=args,
            run=run,
            **kwargs,
        )


    def instantiate_trainer(self, **kwargs):
        # The default progress bar for non-terminals must give way when a config turns bars off.
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("enable_progress_bar") is False:
            self.trainer_defaults = {k: v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        if trainer.get("logger") is False and trainer.get("default_root_dir") == "logs":
            # No logger gives no run id: each such run gets its own folder, so a second run never
            # overwrites the first one's config.yaml, run.json or checkpoints.
            run_dir = f"logs/offline/{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            trainer["default_root_dir"] = self._get(self.config, "trainer")["default_root_dir"] = run_dir
        return super().instantiate_trainer(**kwargs)


def main(args=None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    IGMUCLI(args=args)
