import copy

import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import ESD
from igmu_lightning.data import PromptData
from igmu_lightning.errors import IGMUError


def test_teacher_is_the_original_unet_without_a_second_copy(tiny_spec):
    module = ESD(tiny_spec, variant="x")
    frozen = copy.deepcopy(module.backbone.unet)  # the independent reference: a real copy
    trained = {n for n, p in module.backbone.unet.named_parameters() if p.requires_grad}
    assert trained and all(".attn2." in n for n in trained)
    assert set(module.originals) == trained  # only the trained tensors are kept
    teacher_bytes = sum(t.numel() for t in module.originals.values())
    assert teacher_bytes < 0.2 * sum(p.numel() for p in frozen.parameters())
    with torch.no_grad():  # the student moves away; the teacher must not
        for name, p in module.backbone.unet.named_parameters():
            if p.requires_grad:
                p.add_(0.1)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([500, 20]), module.backbone.encode_prompts(["a cat", "a dog"])
    assert torch.allclose(module.teacher(x, t, c).sample, frozen(x, t, encoder_hidden_states=c).sample, atol=1e-6)
    assert not torch.allclose(module.backbone.unet(x, t, encoder_hidden_states=c).sample, frozen(x, t, encoder_hidden_states=c).sample)


def test_esd_target_is_the_negatively_guided_noise(tiny_spec):
    module = ESD(tiny_spec, negative_guidance=2.0)
    frozen = copy.deepcopy(module.backbone.unet)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    c, null = module.backbone.encode_prompts(["a cat"]), module.backbone.encode_prompts([""])
    with torch.no_grad():
        e_c, e_0 = frozen(x, t, encoder_hidden_states=c).sample, frozen(x, t, encoder_hidden_states=null).sample
    expected = e_0 - 2.0 * (e_c - e_0)  # eps*(x, 0) - eta (eps*(x, c) - eps*(x, 0))
    assert torch.allclose(module.esd_target(x, t, c, null, null), expected, atol=1e-6)


def test_xt_sits_at_the_timestep_it_is_queried_at(tiny_spec):
    module = ESD(tiny_spec, ddim_steps=10)
    c, null = module.backbone.encode_prompts(["a cat"]), module.backbone.encode_prompts([""])
    x_t, t = module.sample_xt(c, null, k=0, batch=2)
    scheduler = module.teacher_sampler(module.sampling).make_scheduler()
    assert t.tolist() == [scheduler.timesteps[0].item()] * 2 and x_t.shape == (2, 4, 8, 8)
    torch.manual_seed(0)
    x_a, _ = module.sample_xt(c, null, k=3, batch=1)
    torch.manual_seed(0)
    x_b, t_b = module.sample_xt(c, null, k=3, batch=1)
    assert torch.equal(x_a, x_b) and t_b.item() == scheduler.timesteps[3].item()


def compvis_ddim_by_hand(module, c, null, noise, t_enc: int, steps: int, scale: float = 3.0) -> torch.Tensor:
    """The paper-era code's partial sampling written out: compvis DDIM (eta 0) over the uniform
    timesteps 1, 1 + T/S, ..., with the first (noisiest) one dropped, from index S - 2 down to
    index t_enc - 1, each step x <- sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps, a_prev = a[tau_{index-1}]."""
    a = module.backbone.noise_scheduler.alphas_cumprod.double()
    stride = 1000 // steps
    tau = [stride * i + 1 for i in range(steps)]
    x = noise.double()
    for index in range(steps - 2, max(t_enc, 1) - 2, -1):
        t = torch.tensor([tau[index]])
        with torch.no_grad():
            e_u, e_c = module.teacher(x.float(), t, null).sample, module.teacher(x.float(), t, c).sample
        eps = (e_u + scale * (e_c - e_u)).double()
        a_t, a_prev = a[tau[index]], a[tau[index - 1]] if index > 0 else a[0]
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@pytest.mark.smoke
@pytest.mark.parametrize("t_enc", [0, 1, 4, 9])
def test_compvis_mapping_runs_the_paper_era_ddim_steps_and_queries_its_timestep_range(tiny_spec, t_enc):
    module = ESD(tiny_spec, ddim_steps=10, timestep_mapping="compvis")
    c, null = module.backbone.encode_prompts(["a cat"]), module.backbone.encode_prompts([""])
    torch.manual_seed(3)
    x_t, t = module.sample_xt(c, null, k=t_enc, batch=1)
    torch.manual_seed(3)  # the same draws: the image seed, then its starting noise
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    expected = compvis_ddim_by_hand(module, c, null, noise, t_enc, steps=10)
    assert torch.allclose(x_t.double(), expected, atol=1e-4)
    assert 100 * t_enc <= t.item() <= 100 * t_enc + 99  # t_enc_ddpm ~ U{round(1000 t_enc / S) ..}
    if t_enc == 9:  # one step: x_t is not the noise, yet queried at 900..999 while it sits at 801
        assert not torch.allclose(x_t, noise)


@pytest.mark.parametrize("xt_prompt, sampled_with", [("concept", "a cat"), ("erase_from", "a dog")])
def test_xt_prompt_chooses_what_xt_is_sampled_with(tiny_spec, monkeypatch, xt_prompt, sampled_with):
    """The 2024 code samples x_t with c even when erasing c from c_f; the 2025 code with c_f."""
    module = ESD(tiny_spec, erase_from="a dog", xt_prompt=xt_prompt, ddim_steps=2)
    seen = []
    real = module.sample_xt
    monkeypatch.setattr(module, "sample_xt", lambda c, null, k, batch: seen.append(c) or real(c, null, k, batch))
    module.training_step({"prompt": ["a cat"]}, 0)
    assert torch.equal(seen[0], module.backbone.encode_prompts([sampled_with]))


def test_the_concept_is_the_batchs_prompt(tiny_spec):
    """ESD erases what the data's prompts say: the same draws with another batch prompt give another
    x_t context, loss and gradient; the same prompt gives the same ones."""
    module = ESD(tiny_spec, ddim_steps=2)
    module.log = lambda *args, **kwargs: None  # outside a Trainer loop
    seen = []
    real = module.sample_xt
    module.sample_xt = lambda c, null, k, batch: seen.append(c) or real(c, null, k, batch)

    def step(prompts):
        torch.manual_seed(0)
        loss = module.training_step({"prompt": prompts}, 0)
        return loss, torch.autograd.grad(loss, module.trainable_parameters())

    cat, cat_grads = step(["a cat", "a cat"])
    again, again_grads = step(["a cat", "a cat"])
    dog, dog_grads = step(["a dog", "a dog"])
    assert torch.equal(cat, again) and all(torch.equal(a, b) for a, b in zip(cat_grads, again_grads))
    assert not torch.equal(cat, dog) and not all(torch.equal(a, b) for a, b in zip(cat_grads, dog_grads))
    assert torch.equal(seen[0], module.backbone.encode_prompts(["a cat", "a cat"]))
    assert torch.equal(seen[2], module.backbone.encode_prompts(["a dog", "a dog"]))
    both, _ = step(["a cat", "a dog"])  # two concepts at once: one per batch item
    assert torch.equal(seen[3], module.backbone.encode_prompts(["a cat", "a dog"])) and not torch.equal(both, cat)


@pytest.mark.smoke
def test_a_few_steps_train_only_cross_attention(tiny_spec, tmp_path):
    module = ESD(tiny_spec, lr=1e-2, ddim_steps=4, export_dir=str(tmp_path / "out"))
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, PromptData(["a cat"], batch_size=2, steps_per_epoch=3)
    )
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2." in n for n in changed)
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_bad_esd_arguments(tiny_spec):
    with pytest.raises(IGMUError, match="unknown ESD variant 'y'"):
        ESD(tiny_spec, variant="y")
    with pytest.raises(IGMUError, match="non-empty concept"):
        ESD(tiny_spec).training_step({"prompt": ["a cat", "  "]}, 0)
    with pytest.raises(IGMUError, match="prompt list is empty"):
        PromptData([])


def test_exported_model_records_its_training_cost(tiny_spec, tmp_path):
    from igmu_lightning.backbone import Pretrained
    from igmu_lightning.evaluation.scoring import training_cost

    module = ESD(tiny_spec, lr=1e-3, ddim_steps=2, export_dir=str(tmp_path / "out"))
    Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, PromptData(["a cat"], steps_per_epoch=1)
    )
    cost = training_cost(Pretrained(str(tmp_path / "out")).build())
    assert cost["efficiency.wall_time_s"]["value"] > 0 and cost["efficiency.peak_memory_mb"]["value"] > 100
