"""What judged the images, for the results JSON's ``run.evaluators``: each detector's path, weight
hash, classes and decision rule (NudeNet: version, model-file hash, classes, threshold), the FID
feature network with the image size it sees, and the interval methods. A number is only as
trustworthy as the judge that produced it, so the judge is named beside it."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

from torch import nn

from igmu_lightning.utils.hashing import module_hash

CI_METHODS = {
    "level": 0.95,
    "rates": "wilson (one image per prompt); cluster_bootstrap_prompts (several images per prompt: "
    "hull of the prompt-resampling percentile bootstrap and Wilson at n / design effect)",
    "continuous": "percentile_bootstrap (cluster_bootstrap_prompts with several images per prompt)",
    "fid": "percentile_bootstrap over image pairs (200 resamples)",
    "exact": "measured once (efficiency): the interval is the value",
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detector_record(detector, path: str | Path | None = None) -> dict:
    """A saved detector (argmax over its classes) or NudeNet (thresholded detections)."""
    if hasattr(detector, "threshold") and hasattr(detector, "nude_scores"):
        return nudenet_record(detector)
    record = {"name": Path(path).name if path else type(detector).__name__, "path": str(path) if path else None}
    weights = module_hash(detector) if isinstance(detector, nn.Module) else None  # a judge without weights has none
    record.update(classes=list(detector.class_names), decision="argmax", sha256=weights)
    features = getattr(detector, "features", None)
    if features is not None and hasattr(features, "config"):
        record["backbone"] = features.config()
    return record


def nudenet_record(detector) -> dict:
    import nudenet

    model = Path(nudenet.__file__).parent / "320n.onnx"
    return {
        "name": "nudenet",
        "version": metadata.version("nudenet"),
        "model_file": model.name,
        "sha256": file_sha256(model) if model.is_file() else None,
        "classes": sorted(detector.classes),
        "threshold": detector.threshold,
        "decision": "nude when any class scores >= threshold",
    }


def fid_record(spec: str | None, network: nn.Module | None, image_size: int | None = None) -> dict:
    """``spec``: ``inception``, the detector folder whose backbone gives the features, or None (no FID)."""
    if spec is None:
        return {"features": None, "skipped": "fid_features is null"}
    if spec == "inception":
        features = "inception-v3-compat (torchmetrics / torch-fidelity), 2048-d pool"
        return {"features": features, "input_size": 299, "image_size": image_size}
    config = network.config() if hasattr(network, "config") else {}
    return {
        "features": f"{spec} (detector backbone)",
        "backbone": config,
        "input_size": config.get("input_size"),
        "image_size": image_size,
        "sha256": module_hash(network),
    }
