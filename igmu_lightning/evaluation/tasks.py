"""The one table that decides, per CatIGMU category, which prompt sets are generated, which
robustness probes run and which metrics apply (README.md, "Results JSON"), for the world evaluation
and IGMU-folder scoring alike. Everything else reads it; no category `if` chains elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from igmu_lightning.errors import IGMUError


@dataclass(frozen=True)
class TaskRule:
    """What one category of erasure is judged on.

    prompt_sets: the sets generated for every model compared (IGMU's ``forgot`` is ``forget``).
    reference_sets: the sets the original model also generates, as references for paired metrics.
    metrics: ``aspect.metric`` names that apply (``*`` stands for a probe's name).
    subject: the family that must survive the erasure of an attribute or a style (None for objects).
    probes: the robustness probes run when an evaluation names none (``evaluation.probes``).
    """

    prompt_sets: tuple[str, ...]
    reference_sets: tuple[str, ...]
    metrics: tuple[str, ...]
    subject: str | None = None
    probes: tuple[str, ...] = ("synonym",)

    def allows(self, metric: str) -> bool:
        return any(fnmatchcase(metric, pattern) for pattern in self.metrics)


_COMMON = (
    "forgetting.target_rate",
    "preservation.retain_accuracy",
    "preservation.near_accuracy",
    "preservation.fid_retain",
    "preservation.feature_distance_retain",
    "quality.fid",
    "alignment.attribute_rate",
    "robustness.*.target_rate",  # one per probe: robustness.synonym.target_rate, ...
    "robustness.*.pre_asr",  # one per attack probe (evaluation.attack_probe): the plain prompt already succeeds,
    "robustness.*.asr",  # success before or after the attack (UnlearnDiffAtk's ASR),
    "robustness.*.seconds_per_prompt",  # and the attack's wall time per attacked prompt
    "robustness.*.target_rate_at_*",  # relearning: the target rate after k fine-tuning steps
    "robustness.*.steps_to_half",  # relearning: steps until half the original's rate is back
    "efficiency.params_changed",
    "efficiency.params_changed_share",
    "efficiency.wall_time_s",
    "efficiency.peak_memory_mb",
)
# Attribute-of-a-subject (nudity) and style erasures must keep the rest of the prompt: the subject
# is still drawn, and the original's images of the stripped prompts are the reference.
_KEEP_REST = (
    "preservation.subject_kept",
    "preservation.fid_remove_word",
    "preservation.feature_distance_remove_word",
    "alignment.csdr",  # SD scale, with a CLIP model: per-image CLIP-score difference rate
)

TASKS: dict[str, TaskRule] = {
    "object": TaskRule(("forget", "unrelated", "near"), ("unrelated",), _COMMON),
    "style": TaskRule(("forget", "unrelated", "near"), ("unrelated", "remove_word"), _COMMON + _KEEP_REST, subject="shape"),
    "attribute": TaskRule(("forget", "unrelated", "near"), ("unrelated", "remove_word"), _COMMON + _KEEP_REST, subject="shape"),
}
TASKS["nudity"] = TASKS["attribute"]  # the SD-scale name of the attribute-of-a-subject category


def task_rule(category: str) -> TaskRule:
    try:
        return TASKS[category]
    except KeyError:
        raise IGMUError(f"unknown task category '{category}': choose one of {', '.join(TASKS)}") from None


def task_category(task: str) -> str:
    """The category of an IGMU prompt-file task key: ``nudity``, ``style_vangogh`` -> style,
    ``object_church`` -> object (the part before the first underscore)."""
    category = task.split("_", 1)[0]
    if category not in TASKS:
        raise IGMUError(f"task '{task}' names no category of the task table ({', '.join(TASKS)}): "
                        "set category explicitly, e.g. category: object")  # fmt: skip
    return category
