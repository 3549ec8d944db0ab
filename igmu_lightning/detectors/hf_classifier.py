"""A transformers image classifier saved in a local folder as a judge: UnlearnDiffAtk's object judge
(``microsoft/resnet-50``, ImageNet top-1: church is class 497) and its style judge (a ViT fine-tuned
on WikiArt, read through ``pipeline("image-classification")``), Diffusion-MU-Attack
``src/tasks/utils/metrics/object_eval.py`` and ``style_eval.py``.

Images go through the folder's own image processor as 8-bit RGB pictures, as the official code
hands it PIL images. With ``top_k`` > 1 and a ``target``, an image counts as the target when the
target is among its k best classes (``predict`` then answers the target's index)."""

from __future__ import annotations

from pathlib import Path

import torch

from igmu_lightning.errors import IGMUError


class HFImageClassifier:
    """Args:
    path: a folder with ``config.json`` (``id2label``), the weights and ``preprocessor_config.json``.
    target: the label that means "the concept is drawn" (needed when ``top_k`` > 1).
    top_k: the target counts when among the k best classes (1: top-1, the object judge).
    batch_size: images per forward pass.
    device: where the classifier runs (default: the images').
    """

    def __init__(self, path: str, target: str | None = None, top_k: int = 1, batch_size: int = 16, device=None) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise IGMUError(f"image classifier '{path}' is not a transformers model folder (no config.json): "
                            "save it with save_pretrained, e.g. microsoft/resnet-50 or the WikiArt ViT")  # fmt: skip
        try:
            self.processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
        except (OSError, ValueError) as err:
            raise IGMUError(f"image classifier '{path}' cannot be loaded ({str(err).splitlines()[0]}): give a complete "
                            "save_pretrained folder with its preprocessor_config.json")  # fmt: skip
        labels = self.model.config.id2label
        self.class_names = [str(labels[i]) for i in range(len(labels))]
        if top_k < 1:
            raise IGMUError(f"top_k must be >= 1, got {top_k}")
        if top_k > 1 and target is None:
            raise IGMUError("a top-k judge needs its target label: set target")
        if target is not None and target not in self.class_names:
            raise IGMUError(f"target '{target}' is not a label of the classifier '{path}' (e.g. {', '.join(self.class_names[:5])})")
        self.target = None if target is None else self.class_names.index(target)
        self.top_k, self.batch_size = top_k, batch_size
        if device is not None:
            self.model.to(device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, classes) logits of images (N, 3, H, W) in [0, 1], on the CPU."""
        out = []
        device = next(self.model.parameters()).device
        for i in range(0, len(images), self.batch_size):
            pixels = (images[i : i + self.batch_size].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            inputs = self.processor(images=[p.permute(1, 2, 0).numpy() for p in pixels], return_tensors="pt")
            out.append(self.model(pixel_values=inputs["pixel_values"].to(device)).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(-1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.logits(images)
        top1 = logits.argmax(-1)
        if self.top_k == 1 or self.target is None:
            return top1
        among = (logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).indices == self.target).any(-1)
        return torch.where(among, torch.full_like(top1, self.target), top1)
