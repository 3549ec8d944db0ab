"""Content detectors as Lightning classifiers: a pluggable feature extractor (timm or CLIP) and a
head, trained with cross-entropy, reporting accuracy, macro F1 and AUROC; saved as safetensors
plus a JSON config, so judging a model never unpickles anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from safetensors.torch import load_file, save
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from igmu_lightning.detectors.encoders import FeatureExtractor, TimmFeatures, build_features
from igmu_lightning.detectors.heads import build_head
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.io import atomic_write_bytes, atomic_write_json
from igmu_lightning.utils.optim import lightning_optimization, optimizer_factory

WEIGHTS, CONFIG = "model.safetensors", "detector.json"


class ImageClassifier(LightningModule):
    """Images in [0, 1] -> class logits. A binary detector is a 2-class one.

    Args:
        class_names: the labels, in index order (must match the data's).
        encoder: image feature extractor (default: timm's ``test_resnet`` at 64 px).
        head: ``linear``, or ``gated`` (IGMU's head, for frozen CLIP features).
        freeze_encoder: train the head only.
        lr, weight_decay: AdamW settings (None: 1e-3, 1e-4).
        export_dir: where the detector is saved at the end of fit.
        optimizer, lr_scheduler: replace AdamW / the constant lr (``utils.optim``: then leave lr and
            weight_decay unset).
    """

    def __init__(
        self,
        class_names: list[str],
        encoder: FeatureExtractor | None = None,
        head: Literal["linear", "gated"] = "linear",
        freeze_encoder: bool = False,
        lr: float | None = None,
        weight_decay: float | None = None,
        export_dir: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        official, settings = {"lr": 1e-3, "weight_decay": 1e-4}, {"lr": lr, "weight_decay": weight_decay}
        self.optimizer_factory = optimizer_factory(torch.optim.AdamW, official, optimizer, settings, "ImageClassifier")
        self.lr_scheduler_factory = lr_scheduler
        if len(class_names) < 2:
            raise IGMUError(f"a detector needs at least 2 classes, got {class_names}")
        self.class_names = list(class_names)
        self.features = encoder if encoder is not None else TimmFeatures()
        self.head_kind = head
        self.head = build_head(head, self.features.num_features, len(class_names))
        if freeze_encoder:
            self.features.requires_grad_(False)
        self.export_dir = export_dir
        n = len(class_names)
        metrics = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(n, average="micro"),
                "f1": MulticlassF1Score(n, average="macro"),
                "auroc": MulticlassAUROC(n),
            }
        )
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C) for images (N, 3, H, W) in [0, 1]."""
        return self(images.to(self.device)).float().softmax(-1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The most probable class index per image."""
        return self.predict_proba(images).argmax(-1)

    def check_data(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "class_names", None)
        if names is not None and list(names) != self.class_names:
            raise IGMUError(f"the data's classes {list(names)} differ from the detector's {self.class_names}: fix class_names")

    def setup(self, stage: str) -> None:
        self.check_data()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["image"]), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _evaluate(self, batch: dict, metrics: MetricCollection, prefix: str) -> None:
        logits = self(batch["image"])
        self.log(f"{prefix}/loss", F.cross_entropy(logits, batch["label"]), sync_dist=True, batch_size=len(logits))
        metrics.update(logits.float().softmax(-1), batch["label"])
        self.log_dict(metrics, prog_bar=prefix == "val", batch_size=len(logits))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        return lightning_optimization(optimizer, self.lr_scheduler_factory(optimizer) if self.lr_scheduler_factory else None)

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            save_detector(self, self.export_dir)
            print(f"exported the detector to {self.export_dir}")

    def detector_config(self) -> dict:
        return {"class_names": self.class_names, "backbone": self.features.config(), "head": self.head_kind}


def save_detector(model: ImageClassifier, folder: str | Path) -> Path:
    """``model.safetensors`` + ``detector.json``, each written atomically."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(("val_", "test_"))}
    atomic_write_bytes(folder / WEIGHTS, save(state))  # bytes, so the write is atomic
    atomic_write_json(folder / CONFIG, model.detector_config())
    return folder


def load_detector(folder: str | Path, device: str | torch.device = "cpu") -> ImageClassifier:
    """A detector saved by ``save_detector`` (weights through safetensors only), in eval mode."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise IGMUError(f"'{folder}' is not a detector folder (needs {CONFIG} and {WEIGHTS})")
    config = json.loads((folder / CONFIG).read_text())
    model = ImageClassifier(config["class_names"], build_features(config["backbone"]), config.get("head", "linear"))
    missing, unexpected = model.load_state_dict(load_file(folder / WEIGHTS), strict=False)
    missing = [k for k in missing if not k.startswith(("val_", "test_"))]
    if missing or unexpected:
        raise IGMUError(f"detector weights in '{folder}' do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()

