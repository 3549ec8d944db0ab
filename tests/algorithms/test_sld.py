import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import SLD, SafeLatentDiffusion
from igmu_lightning.algorithms.sld import SafetyGuidance
from igmu_lightning.artifacts import model_fingerprint
from igmu_lightning.backbone import Pretrained
from igmu_lightning.data import StepData
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler, SamplerSettings


def test_guidance_follows_the_sld_rule_with_momentum(tiny_spec):
    backbone = tiny_spec.build()
    guidance = SafetyGuidance("a cat", warmup=1, scale=50.0, threshold=0.01, momentum_scale=0.3, momentum_beta=0.4)
    backbone.guidance = guidance
    sampler = Sampler(backbone, SamplerSettings(guidance_scale=5.0))
    x = torch.randn(2, 4, 8, 8)
    cond, uncond = sampler.text_pair(["a dog", "a red cat"])
    safety = backbone.encode_prompts(["a cat"] * 2)

    def eps3(t):  # one batched call as the sampler makes it (the threshold is a step function)
        return backbone.unet(torch.cat([x] * 3), t, encoder_hidden_states=torch.cat([uncond, cond, safety])).sample.chunk(3)

    momentum = torch.zeros_like(x)
    for step, t in enumerate([torch.tensor(800), torch.tensor(600)]):  # step 0 in warmup, step 1 guided
        with torch.no_grad():
            e0, ep, es = eps3(t)
            got = sampler.guided_noise(x, t, step, cond, uncond)
        s = torch.clamp((ep - es).abs() * 50.0, max=1.0)
        s[(ep - es) >= 0.01] = 0.0
        g_s = s * (es - e0) + 0.3 * momentum
        momentum = 0.4 * momentum + 0.6 * g_s
        g = (ep - e0) - (g_s if step >= 1 else 0)
        assert torch.allclose(got, e0 + 5.0 * g, atol=1e-5), step
    assert not torch.allclose(g_s, torch.zeros_like(g_s))  # the safety term did act


def test_presets_and_bad_arguments(tiny_spec):
    assert SafetyGuidance.preset("medium") == SafetyGuidance()  # medium is the default
    assert SafetyGuidance.preset("max").warmup == 0
    with pytest.raises(IGMUError, match="unknown SLD preset 'medum'"):
        SafeLatentDiffusion(tiny_spec, preset="medum")
    with pytest.raises(IGMUError, match="non-empty safety_concept"):
        SLD(tiny_spec, safety_concept=" ")


def test_fit_exports_a_guided_model_that_loads_with_its_guidance(tiny_spec, tmp_path):
    module = SLD(tiny_spec, preset="max", safety_concept="a cat", export_dir=str(tmp_path / "sld"))
    Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, StepData(steps_per_epoch=5)
    )
    assert module.trainer.global_step == 0  # nothing trained
    loaded = Pretrained(str(tmp_path / "sld")).build()
    assert loaded.guidance == SafetyGuidance.preset("max", "a cat")
    plain = tiny_spec.build()
    assert loaded.hashes() == plain.hashes()
    assert model_fingerprint(loaded) != model_fingerprint(plain)  # cached images never mix
    settings = SamplerSettings(steps=4, guidance_scale=7.5)  # "max" guides from step 0
    guided = Sampler(loaded, settings).generate(["a red cat"]).images
    unguided = Sampler(plain, settings).generate(["a red cat"]).images
    assert guided.shape == unguided.shape and not torch.equal(guided, unguided)
    spec = SafeLatentDiffusion(Pretrained(str(tmp_path / "sld")), preset="weak")
    assert spec.build().guidance.warmup == 15 and spec.to_config()["init_args"]["backbone"]["class_path"].endswith("Pretrained")


def test_a_corrupt_guidance_file_is_a_one_line_error(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    (folder / "igmu_guidance.json").write_text('{"class_path": "os.system", "init_args": {}}')
    with pytest.raises(IGMUError, match="not part of igmu_lightning"):
        Pretrained(str(folder)).build()
    (folder / "igmu_guidance.json").write_text("{not json")
    with pytest.raises(IGMUError, match="not a valid guidance file"):
        Pretrained(str(folder)).build()


# --- oracle: diffusers' StableDiffusionPipelineSafe on the same weights ------------------------
def safe_pipeline(backbone):
    from diffusers import DDIMScheduler, StableDiffusionPipelineSafe

    pipe = StableDiffusionPipelineSafe(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_sld(backbone, guidance, prompts, seeds, steps, guidance_scale):
    pipe = safe_pipeline(backbone)
    pipe.safety_concept = guidance.safety_concept
    out = pipe(
        prompts, height=16, width=16, num_inference_steps=steps, guidance_scale=guidance_scale,
        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
        sld_guidance_scale=guidance.scale, sld_warmup_steps=guidance.warmup, sld_threshold=guidance.threshold,
        sld_momentum_scale=guidance.momentum_scale, sld_mom_beta=guidance.momentum_beta,
    )  # fmt: skip
    return torch.from_numpy(out.images).permute(0, 3, 1, 2).float()


SLD_PROMPTS = ["a red cat", "a nude girl on a beach", "a church"]


@pytest.mark.parametrize("preset,steps", [("medium", 24), ("max", 6), ("weak", 24)])
def test_images_equal_diffusers_safe_pipeline(tiny_spec, preset, steps):
    """The preset's five numbers and the safety concept, same weights, DDIM, seeds: our SLD and
    diffusers' StableDiffusionPipelineSafe give the same pixels within 1/255."""
    backbone = tiny_spec.build()
    guidance = SafetyGuidance.preset(preset, "a cat, nudity")
    backbone.guidance = guidance
    settings = SamplerSettings(steps=steps, guidance_scale=7.5)
    seeds = [5, 6, 7]
    ours = Sampler(backbone, settings, batch_size=3).generate(SLD_PROMPTS, seeds=seeds).images
    theirs = diffusers_sld(backbone, guidance, SLD_PROMPTS, seeds, steps, 7.5)
    diff = (ours - theirs).abs().max().item()
    print(f"SLD-{preset} vs StableDiffusionPipelineSafe: max |difference| = {diff:.2e}")
    assert diff <= 1 / 255, diff
    backbone.guidance = None  # the comparison can fail: SLD moved the images far more than the difference
    plain = Sampler(backbone, settings, batch_size=3).generate(SLD_PROMPTS, seeds=seeds).images
    effect = (plain - theirs).abs().max().item()
    print(f"  SLD's own effect on the images: {effect:.2e}")
    assert diff < effect / 100
    if preset != "weak":  # weak (threshold 0, s_S 20) barely moves a random tiny model's images
        assert effect > 1 / 255


@pytest.mark.parametrize("guidance_scale,sld_scale", [(1.0, 1000.0), (7.5, 1.0)])
def test_where_diffusers_switches_sld_off_ours_still_guides(tiny_spec, guidance_scale, sld_scale):
    """A genuine difference, pinned: StableDiffusionPipelineSafe applies SLD only when
    guidance_scale > 1 and sld_guidance_scale > 1 (else it samples without it, and warns "Safety
    checker disabled!"). Our SafetyGuidance applies the rule as written at any scale: at
    guidance_scale 1 it gives eps_p - g_S (SLD without CFG); at s_S <= 1 it still subtracts the
    (weaker) safety term. Both are documented in algorithms/sld.py."""
    import warnings

    backbone = tiny_spec.build()
    guidance = SafetyGuidance("a cat, nudity", warmup=0, scale=sld_scale, threshold=0.025, momentum_scale=0.5, momentum_beta=0.7)
    settings = SamplerSettings(steps=6, guidance_scale=guidance_scale)
    seeds = [5, 6, 7]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers_sld(backbone, guidance, SLD_PROMPTS, seeds, 6, guidance_scale)
    plain = Sampler(backbone, settings, batch_size=3).generate(SLD_PROMPTS, seeds=seeds).images
    backbone.guidance = guidance
    ours = Sampler(backbone, settings, batch_size=3).generate(SLD_PROMPTS, seeds=seeds).images
    assert (plain - theirs).abs().max().item() <= 1 / 255  # diffusers: no SLD at all
    assert (ours - theirs).abs().max().item() > 1 / 255  # ours: SLD acts
