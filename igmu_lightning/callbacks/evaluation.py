"""EvalIGMU inside training: at the end of validation or test of any module that holds a
``backbone`` (and its base ``backbone_spec``), score the current model against the original on
fixed prompt sets and log scalars, one W&B table per aspect, and an image grid (original above,
current model below, the same prompts and seeds)."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import make_grid

from igmu_lightning.evaluation.world import WORLD_DETECTORS
from igmu_lightning.evaluation.world_eval import ORIGINAL, WorldEvaluation
from igmu_lightning.sampling import SamplerSettings


class WorldEvalCallback(Callback):
    """Args:
    target: the world target being erased (object / style / attribute).
    detectors: the world's detectors folder.
    prompts_per_class: prompts per class of each set (small: this runs during training).
    sampler: sampling settings.
    every_n_validations: run at every n-th validation (always at test).
    """

    def __init__(
        self,
        target: str = "object",
        detectors: str = WORLD_DETECTORS,
        prompts_per_class: int = 4,
        sampler: SamplerSettings | None = None,
        every_n_validations: int = 1,
    ) -> None:
        self.evaluation = WorldEvaluation(target, detectors=detectors, prompts_per_class=prompts_per_class, sampler=sampler, cache_dir=None)
        self.every = max(1, every_n_validations)
        self.validations = 0
        self.original = None
        self.last: dict | None = None

    def _original(self, pl_module: LightningModule):
        if self.original is None:  # built once, from the same spec the module started from
            self.original = pl_module.backbone_spec.build().to(pl_module.device).eval()
        return self.original

    def _run(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Under DDP every rank makes and scores its share of the prompts; the metrics sync across
        # ranks and the grid's images are gathered, so rank 0 logs the whole evaluation.
        was_training = pl_module.training
        pl_module.eval()
        output = self.evaluation.compare(self._original(pl_module), [("current", pl_module.backbone)], seed=0)
        pl_module.train(was_training)
        self.last = output.methods
        if trainer.is_global_zero:
            self._log(trainer, stage, output.methods)

    def _log(self, trainer: Trainer, stage: str, methods: dict) -> None:
        scalars = {
            f"{stage}/eval/{aspect}.{metric}": value["value"]
            for aspect, metrics in methods["current"]["aspects"].items()
            for metric, value in metrics.items()
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                for aspect in methods["current"]["aspects"]:
                    rows = [
                        [name, metric, v["value"], v["ci95"][0], v["ci95"][1], v["n"]]
                        for name in (ORIGINAL, "current")
                        for metric, v in methods[name]["aspects"].get(aspect, {}).items()
                    ]
                    logger.log_table(f"{stage}/eval/{aspect}", ["model", "metric", "value", "ci95_lo", "ci95_hi", "n"], rows, step=trainer.global_step)
                samples = self.evaluation.samples
                grid = make_grid(torch.cat([samples[ORIGINAL], samples["current"]]), nrow=len(samples[ORIGINAL]))
                logger.log_image(f"{stage}/eval/forget_grid", [grid], step=trainer.global_step, caption=["top: original, bottom: current"])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every == 0:
            self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module, "test")
