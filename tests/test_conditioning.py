"""The differentiable path from prompt or token embeddings to noise predictions and images, which
attacks and adversarial training use; the sampler's no-grad path runs the same code."""

import pytest
import torch

from igmu_lightning.sampling import Sampler, SamplerSettings

PROMPTS = ["a red triangle", "a cat"]


@pytest.fixture(scope="module")
def backbone(tiny_spec):
    return tiny_spec.build()


def test_token_embeddings_give_the_prompt_embeddings(backbone):
    ids = backbone.tokenize(PROMPTS)
    tokens = backbone.token_embeddings(ids)
    with torch.no_grad():
        expected = backbone.encode_prompts(PROMPTS)
        assert tokens.shape == (2, 77, backbone.text_encoder.config.hidden_size)
        assert torch.equal(backbone.encode_embeddings(tokens), expected)  # no ids: only the embeddings count
        moved = tokens.clone()
        moved[:, 2] += torch.randn(moved.shape[-1], generator=torch.Generator().manual_seed(0))  # reaches positions >= 2 only
        out = backbone.encode_embeddings(moved)
    assert torch.equal(out[:, :2], expected[:, :2]) and not torch.allclose(out[:, 2:], expected[:, 2:], atol=1e-4)


def test_gradients_reach_token_embeddings_through_the_noise_prediction(tiny_spec):
    backbone = tiny_spec.build().double()  # float64: the finite difference below is then exact enough
    sampler = Sampler(backbone, SamplerSettings(guidance_scale=3.0))
    tokens = backbone.token_embeddings(backbone.tokenize(PROMPTS)).detach().requires_grad_(True)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64), torch.tensor(400)
    with torch.no_grad():
        uncond = sampler.unconditional(backbone.encode_prompts(PROMPTS))

    def loss(embeds):
        return sampler.guided_noise(x, t, 0, backbone.encode_embeddings(embeds), uncond).pow(2).mean()

    loss(tokens).backward()
    grad = tokens.grad
    assert grad is not None and torch.isfinite(grad).all() and grad[:, :10].abs().sum() > 0
    # the gradient agrees with a finite difference along a random direction
    direction = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        numeric = (loss(tokens + h * direction) - loss(tokens - h * direction)) / (2 * h)
    assert torch.allclose((grad * direction).sum(), numeric, rtol=1e-5)


def test_gradients_reach_prompt_embeddings_through_sampling(backbone):
    sampler = Sampler(backbone, SamplerSettings(steps=2, guidance_scale=3.0))
    with torch.no_grad():
        cond = backbone.encode_prompts(PROMPTS)
    cond = cond.clone().requires_grad_(True)
    images = sampler.sample_embeddings(cond, [3, 4])
    assert images.requires_grad and images.shape == (2, 3, 16, 16)
    images.mean().backward()
    assert cond.grad is not None and torch.isfinite(cond.grad).all() and cond.grad.abs().sum() > 0


def test_the_no_grad_sampler_runs_the_same_code(backbone):
    sampler = Sampler(backbone, SamplerSettings(steps=3, guidance_scale=4.0))
    calls = []
    original = sampler.sample_embeddings
    sampler.sample_embeddings = lambda *a, **k: calls.append(1) or original(*a, **k)
    batch = sampler.sample_batch(PROMPTS, [7, 8])
    assert calls == [1]
    with torch.no_grad():
        tokens = backbone.token_embeddings(backbone.tokenize(PROMPTS))
        direct = original(backbone.encode_embeddings(tokens), [7, 8]).cpu()
    assert torch.equal(batch, direct)
