"""EvalIGMU: evaluations run by ``evaluate.py`` and their results JSON."""

from igmu_lightning.evaluation.base import Evaluation, EvaluationOutput, Inventory
from igmu_lightning.evaluation.results import ASPECTS, results_document, write_results

__all__ = ["ASPECTS", "Evaluation", "EvaluationOutput", "Inventory", "results_document", "write_results"]
