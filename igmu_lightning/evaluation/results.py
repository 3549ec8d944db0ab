"""The results JSON of ``evaluate.py``: one stable layout, written atomically.

    {"run": {"config", "seed", "packages", "model_hashes", "evaluators"},
     "methods": {NAME: {"aspects": {ASPECT: {METRIC: {"value", "ci95": [lo, hi], "n", "ci_method"}}}}}}
"""

from __future__ import annotations

import os
from pathlib import Path

from igmu_lightning.utils.io import atomic_write_json
from igmu_lightning.utils.provenance import package_versions

ASPECTS = ("forgetting", "preservation", "quality", "alignment", "robustness", "efficiency")
GRIDS_SUFFIX = ".grids"  # <results stem>.grids/<method>.png and _all.png (a row per method)
FIGURES_SUFFIX = ".figures"  # <results stem>.figures/<stem>_<kind>.png: the report's figures of these results


def grids_folder(results_path: str | os.PathLike) -> Path:
    """Where evaluate.py writes the image grids of the results at ``results_path``."""
    path = Path(results_path)
    return path.with_name(path.stem + GRIDS_SUFFIX)


def figures_folder(results_path: str | os.PathLike) -> Path:
    """Where evaluate.py writes the report's figures (trade-off, profile, attacks, grid) of the results at ``results_path``."""
    path = Path(results_path)
    return path.with_name(path.stem + FIGURES_SUFFIX)


def exact(value: float) -> dict:
    """A number measured once, not sampled: its interval is the value itself."""
    return {"value": float(value), "ci95": [float(value)] * 2, "n": 1, "ci_method": "exact"}


def by_aspect(metrics: dict[str, dict]) -> dict[str, dict]:
    """``{"aspect.metric": v}`` -> ``{aspect: {metric: v}}``, sorted, as the results JSON nests them."""
    aspects: dict[str, dict] = {}
    for key in sorted(metrics):
        aspect, name = key.split(".", 1)
        aspects.setdefault(aspect, {})[name] = metrics[key]
    return aspects


ASPECT_COLUMNS = ["method", "metric", "value", "ci_low", "ci_high", "n", "ci_method"]


def aspect_rows(methods: dict, aspect: str) -> list[list]:
    """One row per (method, metric) of ``aspect``, ``ASPECT_COLUMNS``: a W&B table of one aspect."""
    return [
        [name, metric, v["value"], v["ci95"][0], v["ci95"][1], v["n"], v["ci_method"]]
        for name, method in methods.items()
        for metric, v in method.get("aspects", {}).get(aspect, {}).items()
    ]


def results_document(config: dict, seed: int, model_hashes: dict, methods: dict, evaluators: dict | None = None) -> dict:
    """Assemble the document; it holds no timestamps or host names, so the same config and seed
    give the same bytes. ``evaluators``: what judged the images (``evaluation.evaluators``)."""
    for name, method in methods.items():
        unknown = set(method.get("aspects", {})) - set(ASPECTS)
        if unknown:
            raise ValueError(f"method '{name}' reports unknown aspects {sorted(unknown)}")
    return {
        "run": {
            "config": config,
            "seed": seed,
            "packages": package_versions(),
            "model_hashes": model_hashes,
            "evaluators": evaluators or {},
        },
        "methods": methods,
    }


def write_results(path: str | os.PathLike, document: dict) -> Path:
    return atomic_write_json(path, document)
