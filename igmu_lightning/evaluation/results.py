"""The results JSON of ``evaluate.py``: one stable layout, written atomically.

    {"run": {"config", "seed", "packages", "model_hashes"},
     "methods": {NAME: {"aspects": {ASPECT: {METRIC: {"value", "ci95": [lo, hi], "n"}}}}}}
"""

from __future__ import annotations

import os
from pathlib import Path

from igmu_lightning.utils.io import atomic_write_json
from igmu_lightning.utils.provenance import package_versions

ASPECTS = ("forgetting", "preservation", "quality", "alignment", "robustness", "efficiency")


def results_document(config: dict, seed: int, model_hashes: dict, methods: dict) -> dict:
    """Assemble the document; it holds no timestamps or host names, so the same config and seed
    give the same bytes."""
    for name, method in methods.items():
        unknown = set(method.get("aspects", {})) - set(ASPECTS)
        if unknown:
            raise ValueError(f"method '{name}' reports unknown aspects {sorted(unknown)}")
    return {
        "run": {"config": config, "seed": seed, "packages": package_versions(), "model_hashes": model_hashes},
        "methods": methods,
    }


def write_results(path: str | os.PathLike, document: dict) -> Path:
    return atomic_write_json(path, document)
