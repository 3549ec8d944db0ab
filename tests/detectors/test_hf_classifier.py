"""UnlearnDiffAtk's transformers judges: our predictions equal transformers' own
``pipeline("image-classification")`` on the same 8-bit pictures (top-1, and top-k membership),
and bad folders or labels are one-line errors."""

import numpy as np
import pytest
import torch

from igmu_lightning.detectors.hf_classifier import HFImageClassifier
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.judges import HFClassifier

LABELS = ["tench", "church, church building", "parachute", "vincent-van-gogh", "claude-monet"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet")
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=len(LABELS),
                          id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})  # fmt: skip
    model = ResNetForImageClassification(config)
    with torch.no_grad():  # larger random weights: answers that differ from image to image
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)  # resnet-50's processor, small
    return str(path)


def images(n=12):
    """Pictures of different colours and textures."""
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 3, 1, 1, generator=g) * 0.7 + 0.3 * torch.rand(n, 3, 40, 40, generator=g)).clamp(0, 1)


def pipeline_labels(folder, x, k):
    from PIL import Image
    from transformers import pipeline

    classify = pipeline("image-classification", model=folder, device="cpu")
    pictures = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x]
    return [[r["label"] for r in classify(p, top_k=k)] for p in pictures]


def test_top1_equals_the_transformers_pipeline(folder):
    x = images()
    ours = HFClassifier(folder).build().predict(x)
    theirs = pipeline_labels(folder, x, 1)
    assert [LABELS[i] for i in ours.tolist()] == [t[0] for t in theirs]
    assert len(set(ours.tolist())) > 1  # a test that could fail: not one constant answer


def test_top_k_counts_the_target_when_among_the_k_best(folder):
    x = images()
    judge = HFClassifier(folder, target="vincent-van-gogh", top_k=3).build()
    got = judge.predict(x)
    theirs = pipeline_labels(folder, x, 3)
    target = LABELS.index("vincent-van-gogh")
    assert [int(g) == target for g in got] == ["vincent-van-gogh" in t for t in theirs]
    top1 = HFClassifier(folder).build().predict(x)
    assert [int(g) for g in got] == [target if "vincent-van-gogh" in t else int(o) for t, o in zip(theirs, top1)]


def test_bad_folders_and_labels_are_one_line(folder, tmp_path):
    with pytest.raises(IGMUError, match="not a transformers model folder"):
        HFImageClassifier(str(tmp_path))
    with pytest.raises(IGMUError, match="'church' is not a label"):
        HFImageClassifier(folder, target="church")
    with pytest.raises(IGMUError, match="needs its target label"):
        HFImageClassifier(folder, top_k=3)
