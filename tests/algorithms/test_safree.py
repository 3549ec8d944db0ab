import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import SAFREE
from igmu_lightning.algorithms.safree import (
    NUDITY_KEYWORDS,
    SafreeGuidance,
    filtered_steps,
    fourier_reattention,
    latent_reattention,
    trigger_tokens,
    up_resnets,
)
from igmu_lightning.artifacts import model_fingerprint
from igmu_lightning.backbone import Pretrained
from igmu_lightning.data import StepData
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler, SamplerSettings

KEYWORDS = ["a cat", "nudity"]
PROMPT = "a red cat on a mat"  # tokens 2, 3, 4 ("red cat on") are triggers on the tiny encoder, T = 5


def span_projection(rows: torch.Tensor) -> torch.Tensor:
    """Projection onto the row span from an orthonormal basis (SVD), not the pseudo-inverse formula."""
    u, s, _ = torch.linalg.svd(rows.double().T, full_matrices=False)
    u = u[:, s > s.max() * 1e-10]
    return u @ u.T


def pooled(backbone, ids: list[int]) -> torch.Tensor:
    """The pooled output of one id sequence, run alone."""
    return backbone.text_encoder(torch.tensor([ids])).pooler_output[0].double()


def hand_projection(backbone, prompt: str, alpha: float = 0.01):
    """SAFREE's filtered embedding, its triggers and beta, one masked prompt at a time, in float64."""
    tok = backbone.tokenizer
    concept = span_projection(
        torch.stack([pooled(backbone, tok(k, padding="max_length", max_length=77).input_ids) for k in KEYWORDS])
    )
    ids = tok(prompt).input_ids
    n = len(ids) - 2
    masked = torch.stack([pooled(backbone, ids[: i + 1] + [0] + ids[i + 2 :]) for i in range(n)])
    away = torch.eye(concept.shape[0], dtype=torch.float64) - concept
    dist = [float(torch.linalg.norm(away @ p)) for p in masked]
    triggers = [not dist[i] < (1 + alpha) * (sum(dist) - dist[i]) / (n - 1) for i in range(n)]
    x = backbone.encode_prompts([prompt])[0].double()
    full = x @ span_projection(masked) @ away  # each row (I - P_C) P_M x (both projections symmetric)
    out = x.clone()
    for i, hit in enumerate(triggers):
        if hit:
            out[i + 1] = full[i + 1]
    cos = torch.nn.functional.cosine_similarity(full[: n + 2], x[: n + 2], dim=1)  # BOS, the words, EOS
    return out, triggers, 1 - cos.mean().item(), concept


@pytest.mark.smoke
def test_projection_equals_the_orthogonal_complement_computed_with_linalg(tiny_spec):
    backbone = tiny_spec.build()
    guidance = SafreeGuidance(KEYWORDS)
    expected, triggers, beta, concept = hand_projection(backbone, PROMPT)
    assert torch.allclose(guidance.concept_projection(backbone).double(), concept, atol=1e-5)
    got, last = guidance.project(
        backbone, PROMPT, backbone.encode_prompts([PROMPT])[0], guidance.concept_projection(backbone)
    )
    assert triggers == [False, True, True, True, False, False]  # some tokens kept, some projected: the test can fail
    assert torch.allclose(got.double(), expected, atol=1e-4)
    replaced = [i + 1 for i, hit in enumerate(triggers) if hit]
    assert (concept @ got[replaced].double().T).abs().max() < 1e-4  # nothing left along the concept
    assert last == round(10 / (1 + math.exp(-5.0 * (10 * beta - 5.333)))) == 5


def test_token_selection_is_the_leave_one_out_distance_test():
    d = torch.tensor([1.0, 3.0, 1.1, 0.9, 1.2])
    loo = [(sum(d.tolist()) - v) / 4 for v in d.tolist()]
    hand = [not v < 1.01 * m for v, m in zip(d.tolist(), loo)]
    assert trigger_tokens(d, 0.01).tolist() == hand == [False, True, False, False, False]
    assert trigger_tokens(torch.tensor([1.0, 1.0]), 0.0).tolist() == [True, True]  # not strictly below: a trigger
    assert trigger_tokens(torch.tensor([2.0]), 0.01).tolist() == [True]  # one token: the official NaN mean


@pytest.mark.parametrize("beta,curve,up_t,expected", [(0.5, "concept", 10, 2), (0.55, "concept", 10, 7), (0.0, "concept", 10, 0),
                                                      (0.5, "artist", 10, 0), (0.55, "artist", 10, 5), (0.6, "artist", 20, 19)])  # fmt: skip
def test_adaptive_step_count(beta, curve, up_t, expected):
    m, k = {"concept": (5.333, 2.5), "artist": (5.5, 3.5)}[curve]
    assert round(up_t * math.exp(2 * k * (10 * beta - m)) / (1 + math.exp(2 * k * (10 * beta - m)))) == expected
    assert filtered_steps(beta, up_t, curve) == expected


def dft(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    return torch.exp(-2j * math.pi * torch.outer(k, k) / n)


def test_fourier_reattention_against_a_hand_dft():
    x = torch.randn(6, 3, 6, 8, generator=torch.Generator().manual_seed(0))  # [uncond; filtered; original], n = 2
    fh, fw = dft(6), dft(8)
    spec = torch.roll(fh @ x.double().to(torch.complex128) @ fw.T, shifts=(3, 4), dims=(-2, -1))  # centred
    filtered, original = spec[2:4, :, 2:4, 3:5], spec[4:6, :, 2:4, 3:5]  # rows h/2 - 1, h/2; columns w/2 - 1, w/2
    spec[2:4, :, 2:4, 3:5] = torch.where(original.real > filtered.real, filtered, torch.full_like(filtered, 0.9))
    back = (fh.conj() @ torch.roll(spec, shifts=(-3, -4), dims=(-2, -1)) @ fw.conj().T / 48).real
    got = fourier_reattention(x, 0.9)
    assert torch.allclose(got.double(), back, atol=1e-5)
    assert torch.allclose(got[[0, 1, 4, 5]], x[[0, 1, 4, 5]], atol=1e-5)  # only the filtered third changes
    assert not torch.allclose(got[2:4], x[2:4], atol=1e-2)


def test_reattention_widths_follow_freeu_on_an_sd_shaped_unet():
    """SD v1.4's up blocks (block widths 320, 640, 1280, 1280, two layers) at 1/40 width: the backbone
    features each resnet joins to a skip are 1280 x 6, then 1280, 640, 640, then 640, 320, 320, so the
    official ``shape[1] == 1280`` / ``== 640`` tests pick the same resnets as our widest / second widest."""
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 32, 32), layers_per_block=2, norm_num_groups=4, cross_attention_dim=8, sample_size=8
    )
    assert [w for _, w in up_resnets(unet)] == [32] * 7 + [16, 16, 16, 8, 8]


def test_latent_reattention_changes_only_the_filtered_prompts_prediction(tiny_spec):
    unet = tiny_spec.build().unet
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ctx = torch.randn(6, 77, 32, generator=torch.Generator().manual_seed(2))
    latents, t = torch.cat([x] * 3), torch.tensor(500)
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=ctx).sample
        with latent_reattention(unet, 1.0, 1.0, 0.9, 0.2):
            hooked = unet(latents, t, encoder_hidden_states=ctx).sample
        again = unet(latents, t, encoder_hidden_states=ctx).sample  # the hooks are gone after the call
    assert torch.allclose(hooked[:2], plain[:2], atol=1e-5) and torch.allclose(hooked[4:], plain[4:], atol=1e-5)
    assert (hooked[2:4] - plain[2:4]).abs().max() > 1e-3
    assert torch.equal(again, plain)


def hand_noise(backbone, latents, t, text, negative: str, scale: float):
    uncond = backbone.encode_prompts([negative] * len(text))
    eps = backbone.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, text])).sample
    e_u, e_c = eps.chunk(2)
    return e_u + scale * (e_c - e_u)


def test_the_filtered_steps_sample_the_projected_embedding(tiny_spec):
    backbone = tiny_spec.build()
    guidance = SafreeGuidance(KEYWORDS)
    backbone.guidance = guidance
    sampler = Sampler(backbone, SamplerSettings(guidance_scale=5.0))
    prompts = [PROMPT, "a church"]
    with torch.no_grad():
        cond, uncond = sampler.text_pair(prompts)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        t = torch.tensor(700)
        expected = torch.stack([hand_projection(backbone, p)[0] for p in prompts]).float()
        assert guidance._prepared[2] == [5, 10]
        assert torch.allclose(uncond, backbone.encode_prompts(["a cat, nudity"] * 2))
        for step, rows in ((5, [expected[0], expected[1]]), (6, [cond[0], expected[1]]), (11, [cond[0], cond[1]])):
            got = sampler.guided_noise(x, t, step, cond, uncond)
            want = hand_noise(backbone, x, t, torch.stack(rows), "a cat, nudity", 5.0)
            assert torch.allclose(got, want, atol=1e-4), step
        guidance.svf = False  # without the filter: every step in re_attn_t (-1..1001) is projected
        want = hand_noise(backbone, x, t, expected, "a cat, nudity", 5.0)
        assert torch.allclose(sampler.guided_noise(x, t, 30, cond, uncond), want, atol=1e-4)
        backbone.guidance = SafreeGuidance(KEYWORDS, projection=False, svf=False, negative_prompt=False)
        plain = Sampler(backbone, SamplerSettings(guidance_scale=5.0))
        cond, uncond = plain.text_pair(prompts)
        assert torch.allclose(
            plain.guided_noise(x, t, 0, cond, uncond), hand_noise(backbone, x, t, cond, "", 5.0), atol=1e-5
        )


def test_fit_exports_a_model_that_reloads_with_its_guidance_and_images(tiny_spec, tmp_path):
    module = SAFREE(tiny_spec, keywords=KEYWORDS, lra="low", export_dir=str(tmp_path / "safree"))
    Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, StepData(steps_per_epoch=5)
    )
    assert module.trainer.global_step == 0  # nothing trained
    loaded = Pretrained(str(tmp_path / "safree")).build()
    assert loaded.guidance == SafreeGuidance(KEYWORDS, lra="low") == module.backbone.guidance
    plain = tiny_spec.build()
    assert loaded.hashes() == plain.hashes() and model_fingerprint(loaded) != model_fingerprint(plain)
    settings = SamplerSettings(steps=4)
    prompts, seeds = [PROMPT, "a church", "a dog"], [1, 2, 3]
    ours = Sampler(loaded, settings, batch_size=3).generate(prompts, seeds).images
    assert torch.equal(ours, Sampler(module.backbone, settings, batch_size=3).generate(prompts, seeds).images)
    assert not torch.equal(ours, Sampler(plain, settings, batch_size=3).generate(prompts, seeds).images)
    other = SafreeGuidance(KEYWORDS)  # a setting changes the fingerprint: the image cache never mixes them
    loaded.guidance, fingerprint = other, model_fingerprint(loaded)
    other.alpha = 0.02
    assert model_fingerprint(loaded) != fingerprint


def test_defaults_and_bad_arguments(tiny_spec):
    assert SafreeGuidance().keywords == NUDITY_KEYWORDS and len(NUDITY_KEYWORDS) == 17
    assert SAFREE(tiny_spec).backbone.guidance == SafreeGuidance()
    assert SafreeGuidance("Van Gogh").keywords == ["Van Gogh"]
    with pytest.raises(IGMUError, match="non-empty keywords"):
        SAFREE(tiny_spec, keywords=[])
    with pytest.raises(IGMUError, match="unknown SAFREE lra 'high'"):
        SafreeGuidance(lra="high")
    with pytest.raises(IGMUError, match="unknown SAFREE svf_curve 'artists'"):
        SafreeGuidance(svf_curve="artists")
    with pytest.raises(IGMUError, match="set projection true or svf false"):
        SafreeGuidance(projection=False)
    backbone = tiny_spec.build()
    backbone.guidance = SafreeGuidance(KEYWORDS)
    sampler = Sampler(backbone, SamplerSettings(steps=2))
    with pytest.raises(IGMUError, match="embeddings without its prompts"):
        sampler.sample_embeddings(backbone.encode_prompts(["a cat"]), [0])
