"""EvalIGMU inside training: at the end of validation or test of any module that holds a
``backbone`` (and its base ``backbone_spec``), score the current model against the original with
any evaluation that compares models (the world's every aspect, or a judge's target rate on a prompt
set at SD scale) and log scalars, one W&B table per aspect, and an image grid (original above,
current model below, the same prompts and seeds)."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from igmu_lightning.artifacts.images import image_grid
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import ORIGINAL, ModelComparison
from igmu_lightning.evaluation.results import ASPECT_COLUMNS, aspect_rows
from igmu_lightning.evaluation.world import WORLD_DETECTORS
from igmu_lightning.evaluation.world_eval import WorldEvaluation
from igmu_lightning.sampling import SamplerSettings

CURRENT = "current"  # the name the model being trained is reported under


class EvalCallback(Callback):
    """Args:
    evaluation: an evaluation that compares models (``evaluation.world_eval.WorldEvaluation``,
        ``evaluation.prompt_set.PromptSetTargetRate``); its own methods and original are not used:
        the module's base model is the original, the model being trained is "current".
    every_n_validations: run at every n-th validation (always at test).
    seed: the seed of the evaluation's prompts, sampling noise and intervals.
    """

    def __init__(self, evaluation: ModelComparison, every_n_validations: int = 1, seed: int = 0) -> None:
        if not isinstance(evaluation, ModelComparison):
            raise IGMUError(f"{type(evaluation).__name__} cannot compare a model in training with its original: "
                            "give a WorldEvaluation or a PromptSetTargetRate")  # fmt: skip
        self.evaluation, self.seed = evaluation, seed
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
        self.evaluation.device = pl_module.device
        output = self.evaluation.compare(self._original(pl_module), [(CURRENT, pl_module.backbone)], seed=self.seed)
        pl_module.train(was_training)
        self.last = output.methods
        if trainer.is_global_zero:
            self._log(trainer, stage, output.methods)

    def _log(self, trainer: Trainer, stage: str, methods: dict) -> None:
        scalars = {
            f"{stage}/eval/{aspect}.{metric}": value["value"]
            for aspect, metrics in methods[CURRENT]["aspects"].items()
            for metric, value in metrics.items()
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                pair = {name: methods[name] for name in (ORIGINAL, CURRENT)}
                for aspect in methods[CURRENT]["aspects"]:
                    logger.log_table(f"{stage}/eval/{aspect}", ASPECT_COLUMNS, aspect_rows(pair, aspect), step=trainer.global_step)
                samples = self.evaluation.samples
                grid = image_grid([samples[ORIGINAL], samples[CURRENT]])
                logger.log_image(f"{stage}/eval/forget_grid", [grid], step=trainer.global_step, caption=["top: original, bottom: current"])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every == 0:
            self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer, pl_module, "test")


class WorldEvalCallback(EvalCallback):
    """Every aspect of the world evaluation (``EvalCallback`` with a ``WorldEvaluation``).

    Args:
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
        evaluation = WorldEvaluation(target, detectors=detectors, prompts_per_class=prompts_per_class, sampler=sampler, cache_dir=None)
        super().__init__(evaluation, every_n_validations)
