"""The shipped world artefacts: the base model loads in diffusers and draws what it is asked, the
detectors are right on fresh world images, and everything stays small."""


import pytest
import torch
from diffusers import StableDiffusionPipeline

from igmu_lightning.backbone import Pretrained
from igmu_lightning.detectors import load_detector
from igmu_lightning.sampling import Sampler, SamplerSettings
from igmu_lightning.world import FAMILIES, WorldScenes
from tests.conftest import ROOT

BASE = ROOT / "checkpoints/world/base"
DETECTORS = ROOT / "checkpoints/world/detectors"


def test_shipped_checkpoints_are_small_and_pickle_free():
    files = [p for p in (ROOT / "checkpoints").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 50 * 2**20
    assert not [p for p in files if p.suffix in (".ckpt", ".pt", ".pth", ".bin", ".pkl")]


def test_base_model_loads_in_a_stock_diffusers_pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(BASE, safety_checker=None)
    generator = torch.Generator().manual_seed(0)
    images = pipe(["a red circle on a plain background"], num_inference_steps=5, generator=generator, output_type="pt").images
    assert images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shipped_detectors_are_right_on_fresh_world_images(family):
    detector = load_detector(DETECTORS / family)
    assert detector.class_names == list(FAMILIES[family])
    data = WorldScenes(200, "test", seed=12345)  # a seed no detector was trained or tested on
    items = [data[i] for i in range(200)]
    predictions = detector.predict(torch.stack([it["image"] for it in items]))
    accuracy = (predictions == torch.tensor([it[family] for it in items])).float().mean().item()
    assert accuracy >= 0.98


def test_base_model_draws_the_shape_it_is_asked_for():
    model = Pretrained(str(BASE)).build()
    sampler = Sampler(model, SamplerSettings(steps=25), batch_size=16)
    shape = load_detector(DETECTORS / "shape")
    for name in ("triangle", "circle"):
        images = sampler.generate([f"a blue {name} on a plain background"] * 16, base_seed=7).images
        hits = (shape.predict(images) == FAMILIES["shape"].index(name)).float().mean().item()
        assert hits >= 0.75, f"{name}: {hits}"
