"""``LightningCLI`` for the project: class_path/init_args YAML configs, W&B by default, a run
record (resolved config, seed, package versions, model hashes) saved beside every run's logs, and a
resumable ``last.ckpt`` every few steps (``--ckpt_path last`` continues the same run)."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from igmu_lightning.config_errors import OneLineErrors
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.io import atomic_write_json, atomic_write_text
from igmu_lightning.utils.provenance import provenance

DEFAULT_LOGGER = {"class_path": "igmu_lightning.loggers.WandbLogger"}
CHECKPOINTS_PER_RUN = 6  # the default cadence: last.ckpt every max_steps / 6 steps (50 of the world's 300)
LIGHTNING_CKPT_NAMES = ("best", "hpc")  # --ckpt_path values Lightning resolves itself


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


class RunCheckpoint(ModelCheckpoint):
    """The CLI's default checkpoint: only ``last.ckpt`` in the run's ``checkpoints/``, rewritten every
    ``every_n_train_steps`` steps (None: every epoch; 0: never) and at the end of fit, so a killed
    run loses at most that many steps and a finished one can be evaluated (``FromCheckpoint``)."""

    def __init__(self, every_n_train_steps: int | None = None, **kwargs) -> None:
        kwargs = {"save_last": True, "save_top_k": 0, "enable_version_counter": False, **kwargs}
        if every_n_train_steps is not None:
            kwargs.setdefault("every_n_epochs", 0)
        super().__init__(every_n_train_steps=every_n_train_steps, **kwargs)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args, **kwargs) -> None:
        """Lightning's, without its 15-line warning for manually optimised modules
        (AdvUnlearn): the state after the step is the one a resumed run must continue from."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # not saved at this step yet
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def checkpoint_cadence(every: int | None, max_steps: int | None) -> int | None:
    """Steps between checkpoints: ``every`` when given, else a sixth of ``max_steps`` (epoch ends
    for runs without ``max_steps``)."""
    if every is not None:
        if every < 0:
            raise IGMUError(f"checkpoint_every must be >= 0 (0: only at the end), got {every}")
        return every
    return max(1, max_steps // CHECKPOINTS_PER_RUN) if max_steps and max_steps > 0 else None


def checkpoint_run(path: Path) -> dict:
    """The ``igmu.run`` record of a checkpoint (run id, wall time so far), read without loading its
    tensors; {} for a checkpoint written before it was recorded."""
    state = checkpoint_state(path)
    return dict(state.get("igmu", {}).get("run", {})) if isinstance(state, dict) else {}


def checkpoint_state(path: Path):
    """A checkpoint's contents, memory-mapped (tensors are not read) and without unpickling code."""
    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:
        raise IGMUError(f"checkpoint '{path}' cannot be read ({type(err).__name__}): give a Lightning .ckpt file") from None


def check_checkpoint_module(path: Path, config) -> None:
    """A checkpoint resumes only the module class that wrote it (an ESD run's into a UCE config would
    load tensors that mean something else, or nothing)."""
    state = checkpoint_state(path)
    written = state.get("igmu", {}).get("module") if isinstance(state, dict) else None
    model = config.get("model")
    wanted = model.get("class_path") if hasattr(model, "get") else None
    theirs, ours = str(written).rsplit(".", 1)[-1], str(wanted).rsplit(".", 1)[-1]  # class names: paths may be aliases
    if written and wanted and theirs != ours:
        raise IGMUError(f"--ckpt_path '{path}' is a checkpoint of {theirs}, but this config trains {ours}: "
                        f"give a checkpoint of a {ours} run, or drop --ckpt_path to start afresh")  # fmt: skip


class IGMUArgumentParser(OneLineErrors, LightningArgumentParser):
    """Lightning's parser with one-line config errors (key, file, closest valid keys)."""


class IGMUCLI(LightningCLI):
    """``train.py``: subcommands fit / validate / test / predict over any of the project's modules."""

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        # Runs without a logger keep their checkpoints under logs/, never in the shipped checkpoints/.
        defaults = {"logger": DEFAULT_LOGGER, "default_root_dir": "logs"}
        if not sys.stderr.isatty():  # in batch jobs and log files, print progress lines every 50 steps
            defaults["callbacks"] = [TQDMProgressBar(refresh_rate=50)]
        kwargs.setdefault("trainer_defaults", defaults)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("parser_class", IGMUArgumentParser)
        self._igmu_args = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
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


    def init_parser(self, **kwargs):
        parser = super().init_parser(**kwargs)
        parser.igmu_args = self._igmu_args  # where the config files are, for the error line
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--checkpoint_every", type=Optional[int], default=None,
            help="steps between resumable checkpoints (the run's checkpoints/last.ckpt, rewritten each time); "
            "default: a sixth of trainer.max_steps; 0: only at the end; unused with trainer.enable_checkpointing false",
        )  # fmt: skip

    def _parse_ckpt_path(self) -> None:
        """Refuse a checkpoint of another module before Lightning merges its hyperparameters into
        the config (which would silently train the checkpoint's module instead of the config's)."""
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            check_checkpoint_module(Path(ckpt), self.config[sub])
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Check ``--ckpt_path`` (one error line, not a traceback), resolve ``last`` to this config's
        newest run, and make a resumed fit continue that run (same W&B id and folder)."""
        sub = self.subcommand
        config = self.config.get(sub) if sub else None
        ckpt = config.get("ckpt_path") if config is not None else None
        if ckpt is None or ckpt in LIGHTNING_CKPT_NAMES or str(ckpt).startswith("registry"):
            return
        if ckpt == "last":
            path = self.last_checkpoint(config)
        else:
            path = Path(ckpt)
            if not path.is_file():
                raise IGMUError(f"--ckpt_path '{ckpt}' does not exist: give a run's checkpoint "
                                "(logs/<project>/<run id>/checkpoints/last.ckpt) or 'last' for this config's newest run")  # fmt: skip
        check_checkpoint_module(path, config)
        config["ckpt_path"] = str(path)
        if sub == "fit":
            self.continue_run(config, path)

    def _wandb_args(self, config):
        """The init args of a W&B logger config (None for no logger or another logger)."""
        logger = config["trainer"].get("logger")
        if hasattr(logger, "get") and str(logger.get("class_path", "")).endswith("WandbLogger"):
            if logger.get("init_args") is None:
                logger["init_args"] = type(logger)()
            return logger["init_args"]
        return None

    def _runs_root(self, config) -> Path | None:
        """Where this config's run folders are: <save_dir>/<project> (W&B) or logs/offline (no logger)."""
        trainer, wandb = config["trainer"], self._wandb_args(config)
        if wandb is not None:
            return Path(wandb.get("save_dir") or ".") / (wandb.get("project") or "lightning_logs")
        if trainer.get("logger") is False:
            root = Path(trainer.get("default_root_dir") or "logs")
            return root / "offline" if str(trainer.get("default_root_dir")) == "logs" else root
        return None

    def last_checkpoint(self, config) -> Path:
        """The newest ``checkpoints/last.ckpt`` of a run with this config's model and data."""
        root = self._runs_root(config)
        if root is None:
            raise IGMUError("--ckpt_path last finds runs of the W&B logger or of runs without a logger: "
                            "give this logger's checkpoint path instead")  # fmt: skip
        current = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False))
        found = []
        for ckpt in [root / "checkpoints" / "last.ckpt", *root.glob("*/checkpoints/last.ckpt")]:
            saved = ckpt.parent.parent / "config.yaml"
            if ckpt.is_file() and saved.is_file():
                previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
                if all(previous.get(k) == current.get(k) for k in ("model", "data")):
                    found.append(ckpt)
        if not found:
            raise IGMUError(f"--ckpt_path last: no run under '{root}' with this model and data config has "
                            "checkpoints/last.ckpt: start without --ckpt_path, or give a checkpoint's path")  # fmt: skip
        return max(found, key=lambda p: p.stat().st_mtime)

    def continue_run(self, config, path: Path) -> None:
        """Log into the checkpoint's run: its W&B id (so its folder, config and last.ckpt), or its
        folder for runs without a logger."""
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        wandb = self._wandb_args(config)
        if wandb is not None and wandb.get("version") is None:
            version = checkpoint_run(path).get("logger_version") or (run_dir.name if run_dir else None)
            if version:
                wandb["version"] = version
        trainer = config["trainer"]
        if trainer.get("logger") is False and str(trainer.get("default_root_dir")) == "logs" and run_dir is not None:
            trainer["default_root_dir"] = str(run_dir)

    def instantiate_trainer(self, **kwargs):
        # The default progress bar for non-terminals must give way when a config turns bars off.
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("enable_progress_bar") is False:
            self.trainer_defaults = {k: v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        configured = trainer.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if trainer.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in configured):
            every = checkpoint_cadence(self._get(self.config_init, "checkpoint_every"), trainer.get("max_steps"))
            defaults = list(self.trainer_defaults.get("callbacks", []))
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*defaults, RunCheckpoint(every)]}
        if trainer.get("logger") is False and trainer.get("default_root_dir") == "logs":
            # No logger gives no run id: each such run gets its own folder, so a second run never
            # overwrites the first one's config.yaml, run.json or checkpoints.
            run_dir = f"logs/offline/{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            trainer["default_root_dir"] = self._get(self.config, "trainer")["default_root_dir"] = run_dir
        try:
            return super().instantiate_trainer(**kwargs)
        except Exception as err:  # Lightning's MisconfigurationException: no GPU, too many devices...
            if type(err).__name__ != "MisconfigurationException":
                raise
            first = str(err).strip().splitlines()[0].rstrip(".")
            raise IGMUError(f"trainer.accelerator {trainer.get('accelerator')} with trainer.devices {trainer.get('devices')} cannot "
                            f"run here ({first}): use --trainer.accelerator cpu, or fewer --trainer.devices") from None  # fmt: skip


def main(args=None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    IGMUCLI(args=args)
