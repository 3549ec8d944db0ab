"""Weights & Biases through Lightning's ``WandbLogger``, offline unless an API key is configured,
so a run never blocks on a login prompt; ``wandb sync <run dir>`` uploads an offline run later."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

from igmu_lightning.utils.wandb_mode import wandb_key_configured, wandb_offline

__all__ = ["WandbLogger", "wandb_key_configured"]


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with the project's defaults.

    Args:
        project: W&B project.
        name: run name (W&B picks one when unset).
        save_dir: where runs, checkpoints and configs go (``<save_dir>/<project>/<run id>/``).
        offline: ``None`` means offline unless an API key is configured or ``WANDB_MODE=online``.
        entity, group, tags, notes, job_type: passed to ``wandb.init``.
        log_model: upload checkpoints as artifacts (refused offline).
    """

    def __init__(
        self,
        project: str = "igmu-lightning",
        name: str | None = None,
        save_dir: str = "logs",
        offline: bool | None = None,
        version: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        job_type: str | None = None,
        log_model: bool = False,
    ) -> None:
        offline = wandb_offline(offline)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        extra = {"entity": entity, "group": group, "tags": tags, "notes": notes, "job_type": job_type}
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=offline,
            project=project,
            log_model=log_model,
            **{k: v for k, v in extra.items() if v is not None},
        )
