"""The image cache: a rerun reads images back, and mixed precision gets its own folder."""

import torch

from igmu_lightning.artifacts import ImageCache
from igmu_lightning.evaluation.generation import generate_images
from igmu_lightning.sampling import Sampler, SamplerSettings


def test_cached_images_are_read_back_and_autocast_images_are_kept_apart(tiny_spec, tmp_path):
    sampler = Sampler(tiny_spec.build().eval(), SamplerSettings(steps=2), batch_size=2)
    cache, prompts, seeds = ImageCache(tmp_path), ["a red circle", "a blue square"], [3, 4]
    fp32 = generate_images(sampler, prompts, seeds, cache)
    assert len(list(tmp_path.rglob("*.png"))) == 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = generate_images(sampler, prompts, seeds, cache)
    folders = {p.parent for p in tmp_path.rglob("*.png")}
    assert len(folders) == 2 and len(list(tmp_path.rglob("*.png"))) == 4  # not served the fp32 images
    assert not torch.equal(bf16, fp32)
    sampler.generate = lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated a cached image"))
    assert torch.equal(generate_images(sampler, prompts, seeds, cache), fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(generate_images(sampler, prompts, seeds, cache), bf16)
