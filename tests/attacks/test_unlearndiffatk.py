"""UnlearnDiffAtk on the tiny backbone: the token distributions stay on the simplex, the denoising
loss falls, a batch equals its prompts attacked one at a time, a prompt stops at its first success."""

import pytest
import torch

from igmu_lightning.attacks import AttackContext, UnlearnDiffAtk
from igmu_lightning.attacks.unlearndiffatk import PRESETS, _draw, project_simplex
from igmu_lightning.backbone import TinySD
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import SamplerSettings

SETTINGS = SamplerSettings(steps=2)
PROMPTS = ["a red triangle", "a blue square on grass", "a green circle"]
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def models():
    return TinySD(seed=1, image_size=16).build().eval(), TinySD(seed=0, image_size=16).build().eval()


def sort_projection(v: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection onto the simplex by sorting (Duchi et al. 2008), as a reference."""
    u, _ = v.sort(-1, descending=True)
    css = u.cumsum(-1) - 1
    ind = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    rho = ((u - css / ind > 0) * ind).argmax(-1, keepdim=True)
    return (v - css.gather(-1, rho) / (rho + 1).to(v.dtype)).clamp(min=0)


def test_projection_lands_on_the_simplex_and_is_the_euclidean_one():
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 0.1, 3.0):
        x = torch.randn(2, 3, 500, generator=g, dtype=torch.float64) * scale
        p = project_simplex(x)
        assert p.min() >= 0 and p.max() <= 1 and torch.allclose(p.sum(-1), torch.ones(2, 3, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(p, sort_projection(x), atol=1e-12)
        assert torch.allclose(project_simplex(p), p, atol=1e-12)  # a point of the simplex stays put
    uniform = torch.full((1, 3, 49408), 1 / 49408)
    assert torch.allclose(project_simplex(uniform), uniform)


def test_draws_follow_the_distribution_and_depend_only_on_their_generator():
    probs = project_simplex(torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(1)))
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    both = _draw(probs, gens)
    alone = _draw(probs[1:], [torch.Generator().manual_seed(6)])
    assert torch.equal(both[1:], alone) and (probs.gather(-1, both[..., None]) > 0).all()  # never a zero-probability token
    counts = torch.bincount(torch.cat([_draw(probs[:1], [gens[0]]).flatten()[:1] for _ in range(2000)]), minlength=50)
    assert torch.allclose(counts / 2000, probs[0, 0], atol=0.05)


def test_the_denoising_loss_falls(models):
    """Against the same run with lr 0 (the same noise and timestep draws, the distributions left
    uniform), the optimised prefix's loss is lower, and more so the longer it runs."""
    model, original = models
    context = AttackContext(model, PROMPTS, SEEDS, original=original, sampler=SETTINGS)
    runs = {lr: UnlearnDiffAtk(k=3, iterations=40, timesteps=1, lr=lr, keep_losses=True).run(context) for lr in (0.05, 0.0)}
    losses = {lr: torch.tensor([d["losses"] for d in r.details]).sum(0) for lr, r in runs.items()}  # the batch's loss per iteration
    gap = losses[0.0] - losses[0.05]
    assert gap.shape == (40,) and gap[-10:].mean() > 0 and gap[-10:].mean() > gap[:10].mean()
    result = runs[0.05]
    assert all(d["steps"] == 40 and len(d["prefix_ids"]) == 3 and not d["success"] for d in result.details)
    for text, prompt in zip(result.prompts, PROMPTS):
        assert text.endswith(" " + prompt) and len(text) > len(prompt) + 1


def test_a_batch_equals_its_prompts_attacked_one_at_a_time(models):
    model, original = models
    attack = UnlearnDiffAtk(k=2, iterations=3, timesteps=2, keep_losses=True)
    batch = attack.run(AttackContext(model, PROMPTS, SEEDS, original=original, sampler=SETTINGS, seed=4))
    for i in range(len(PROMPTS)):
        alone = attack.run(AttackContext(model, PROMPTS[i : i + 1], SEEDS[i : i + 1], original=original, sampler=SETTINGS, seed=4))
        assert alone.prompts[0] == batch.prompts[i]
        assert alone.details[0]["prefix_ids"] == batch.details[i]["prefix_ids"]
        assert alone.details[0]["losses"] == pytest.approx(batch.details[i]["losses"], rel=1e-4, abs=1e-6)


def test_a_prompt_stops_at_its_first_success_and_the_others_go_on(models):
    model, original = models
    calls = []

    def judge(images):  # succeeds on the first prompt's image at the first read-out only
        calls.append(len(images))
        return torch.tensor([len(calls) == 1] + [False] * (len(images) - 1))

    attack = UnlearnDiffAtk(k=2, iterations=2, timesteps=3)
    result = attack.run(AttackContext(model, PROMPTS, SEEDS, original=original, sampler=SETTINGS, judge=judge))
    assert calls == [3, 2, 2]  # the winner leaves the batch
    first, *rest = result.details
    assert first["success"] and first["steps"] == 2 and first["timestep"] == attack.timestep_grid(1000)[0]
    assert all(not d["success"] and d["steps"] == 6 for d in rest)


def test_presets_and_settings():
    assert PRESETS["full"] == {"k": 3, "iterations": 40, "timesteps": 50, "lr": 0.01, "weight_decay": 0.1}
    full = UnlearnDiffAtk("full")
    assert full.timestep_grid(1000) == list(range(10, 1000, 20))  # 10, 30, ..., 990
    assert UnlearnDiffAtk("quick", k=5).k == 5 and UnlearnDiffAtk("quick").iterations == PRESETS["quick"]["iterations"]
    with pytest.raises(IGMUError, match="unknown UnlearnDiffAtk preset 'fast'"):
        UnlearnDiffAtk("fast")
    with pytest.raises(IGMUError, match="needs the model before unlearning"):
        UnlearnDiffAtk().run(AttackContext(TinySD(image_size=16).build(), ["a"], [0]))
