"""Lightning callbacks: EvalIGMU during validation and test of unlearning modules."""

from igmu_lightning.callbacks.evaluation import EvalCallback, WorldEvalCallback

__all__ = ["EvalCallback", "WorldEvalCallback"]
