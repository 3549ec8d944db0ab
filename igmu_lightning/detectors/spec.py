"""What a config names as a judge: a spec whose ``build()`` returns an object with ``class_names``,
``predict(images)`` and ``predict_proba``. The specs themselves (a saved detector, NudeNet, person
judges) are in ``evaluation.judges``; the base lives here so that algorithms, which may not import
evaluation, can take a judge too (RECE keeps its best epoch by one)."""

from __future__ import annotations


class JudgeSpec:
    """``build()`` returns an object with ``class_names``, ``predict(images)`` and ``predict_proba``."""

    def build(self):
        raise NotImplementedError
