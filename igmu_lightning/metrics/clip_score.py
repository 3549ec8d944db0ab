"""Per-image CLIP scores and CSDR (IGMU's CLIP-score difference rate), computed image by image,
never from a batch mean (IGMU had to hand-edit torchmetrics to get per-image scores)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from igmu_lightning.errors import IGMUError
from igmu_lightning.metrics.rates import SampleMean


class ClipScorer(nn.Module):
    """CLIP score of each (image, prompt) pair: 100 * max(cos(E_img, E_txt), 0), as torchmetrics'
    CLIPScore defines it, but per pair.

    Args:
        path: hub id or local folder of a transformers CLIP model with its processor.
    """

    def __init__(self, path: str = "openai/clip-vit-large-patch14") -> None:
        super().__init__()
        from transformers import CLIPModel, CLIPProcessor

        from igmu_lightning.backbone.loader import resolve_model_source

        source, local_only = resolve_model_source(path, ("config.json",), "transformers model")
        try:
            self.model = CLIPModel.from_pretrained(source, local_files_only=local_only).eval().requires_grad_(False)
            self.processor = CLIPProcessor.from_pretrained(source, local_files_only=local_only)
        except OSError as err:
            raise IGMUError(f"cannot load CLIP model '{path}': {str(err).splitlines()[0]}") from None
        self.path = path

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        pixels = self.processor(images=list(images.float().clamp(0, 1)), return_tensors="pt", do_rescale=False)
        text = self.processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True)
        device = next(self.model.parameters()).device
        image_emb = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(device))
        text_emb = self.model.get_text_features(input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device))
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        return 100 * F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1).clamp(min=0)


def csdr_per_image(original_scores: torch.Tensor, unlearned_scores: torch.Tensor) -> torch.Tensor:
    """|CS(orig_i) - CS(unlearned_i)| / CS(orig_i) * 100 for each image pair i (both scored
    against the same concept-stripped prompt)."""
    original_scores, unlearned_scores = original_scores.double(), unlearned_scores.double()
    return (original_scores - unlearned_scores).abs() / original_scores.clamp(min=1e-8) * 100


class CSDR(SampleMean):
    """Mean per-image CLIP-score difference rate (lower: the unlearned model keeps the rest of
    the prompt as the original did). Values are percentages, not rates.

    update(original_images, unlearned_images, stripped_prompts, groups=None): matched pairs of the
    same prompt and seed; prompts already stripped of the concept words (``utils.text.strip_concept``);
    groups: prompt ids, for the bootstrap over prompts when a prompt has several seeds.
    """

    higher_is_better = False

    def __init__(self, scorer: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scorer = scorer

    def update(  # type: ignore[override]
        self,
        original_images: torch.Tensor,
        unlearned_images: torch.Tensor,
        stripped_prompts: list[str],
        groups: torch.Tensor | None = None,
    ) -> None:
        rates = csdr_per_image(self.scorer(original_images, stripped_prompts), self.scorer(unlearned_images, stripped_prompts))
        self.outcomes.append(rates.float())
        self._add_groups(groups, len(rates), rates.device)
