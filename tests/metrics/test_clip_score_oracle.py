"""Per-image CLIP scores against the library they imitate: torchmetrics' clip_score / CLIPScore,
called on one image at a time (its value for a batch is the batch mean), on a tiny offline CLIP."""

import pytest
import torch
from torch import nn

from igmu_lightning.metrics.clip_score import ClipScorer
from tests.conftest import build_tiny_clip

PROMPTS = ["a red circle", "a blue square", "a green cross", "a nude person", "a church", "a dog on grass",
           "a photo of a cat", "an oil painting of a harbour"]  # fmt: skip


class Transformers5Features(nn.Module):
    """torchmetrics 1.9 expects ``get_image_features``/``get_text_features`` to return tensors;
    transformers 5 returns an output object holding them as ``pooler_output``. Unwraps, no maths."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return ClipScorer(str(build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")))


def test_per_image_clip_scores_equal_torchmetrics(scorer):
    from torchmetrics.functional.multimodal import clip_score
    from torchmetrics.multimodal import CLIPScore

    model_and_processor = lambda: (Transformers5Features(scorer.model), scorer.processor)
    torch.manual_seed(1)
    images = torch.rand(len(PROMPTS), 3, 40, 48)  # not the model's 32x32: the processor resizes and crops
    ours = scorer(images, PROMPTS)
    # torchmetrics hands images to the processor unscaled (its default rescale divides by 255)
    functional = torch.stack([clip_score(images[i] * 255, PROMPTS[i], model_and_processor) for i in range(len(PROMPTS))])
    metric = CLIPScore(model_name_or_path=model_and_processor)
    per_image = []
    for i in range(len(PROMPTS)):
        metric.reset()
        metric.update(images[i : i + 1] * 255, PROMPTS[i : i + 1])
        per_image.append(metric.compute())
    diff = max((ours - functional).abs().max().item(), (ours - torch.stack(per_image)).abs().max().item())
    print(f"CLIP score vs torchmetrics: max |difference| = {diff:.2e} (scores {ours.min():.2f}..{ours.max():.2f})")
    assert diff < 1e-3
    assert (ours > 0).sum() >= 4 and len(set(ours.round(decimals=3).tolist())) >= 4  # distinct, mostly unclamped
    # the batch value torchmetrics reports is the mean; ours keeps each image's
    metric.reset()
    metric.update(images * 255, PROMPTS)
    assert metric.compute().item() != pytest.approx(ours[0].item(), abs=1e-2)


def test_uint8_images_are_resized_before_rescaling_in_torchmetrics(scorer):
    """Pinned: torchmetrics given uint8 images (as read from PNGs) lets the processor resize them in
    uint8, rounding the interpolated pixels, before rescaling; we resize floats in [0, 1]. On a
    resized image the scores then differ a little (not at the model's own resolution)."""
    from torchmetrics.functional.multimodal import clip_score

    model_and_processor = lambda: (Transformers5Features(scorer.model), scorer.processor)
    torch.manual_seed(2)
    for size, differs in (((40, 48), True), ((32, 32), False)):
        images = (torch.rand(3, 3, *size) * 255).round().to(torch.uint8)
        ours = scorer(images.float() / 255, PROMPTS[:3])
        theirs = torch.stack([clip_score(images[i], PROMPTS[i], model_and_processor) for i in range(3)])
        assert ((ours - theirs).abs().max().item() > 1e-3) == differs, size
