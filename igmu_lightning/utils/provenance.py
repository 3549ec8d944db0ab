"""What a run records about itself: package versions, the platform, the command line."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = (
    "igmu-lightning",
    "torch",
    "lightning",
    "diffusers",
    "transformers",
    "torchmetrics",
    "jsonargparse",
    "wandb",
    "timm",
    "safetensors",
    "open_clip_torch",
    "numpy",
    "scipy",
    "nudenet",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance() -> dict:
    return {"packages": package_versions(), "platform": platform.platform(), "argv": list(sys.argv)}
