import copy

import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import ESD
from igmu_lightning.data import PromptData
from igmu_lightning.errors import IGMUError


def test_teacher_is_the_original_unet_without_a_second_copy(tiny_spec):
    module = ESD(tiny_spec, concept="a cat", variant="x")
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
    module = ESD(tiny_spec, concept="a cat", negative_guidance=2.0)
    frozen = copy.deepcopy(module.backbone.unet)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    c, null = module.backbone.encode_prompts(["a cat"]), module.backbone.encode_prompts([""])
    with torch.no_grad():
        e_c, e_0 = frozen(x, t, encoder_hidden_states=c).sample, frozen(x, t, encoder_hidden_states=null).sample
    expected = e_0 - 2.0 * (e_c - e_0)  # eps*(x, 0) - eta (eps*(x, c) - eps*(x, 0))
    assert torch.allclose(module.esd_target(x, t, c, null, null), expected, atol=1e-6)


def test_xt_sits_at_the_timestep_it_is_queried_at(tiny_spec):
    module = ESD(tiny_spec, concept="a cat", ddim_steps=10)
    c, null = module.backbone.encode_prompts(["a cat"]), module.backbone.encode_prompts([""])
    x_t, t = module.sample_xt(c, null, k=0, batch=2)
    scheduler = module.teacher_sampler(module.sampling).make_scheduler()
    assert t.tolist() == [scheduler.timesteps[0].item()] * 2 and x_t.shape == (2, 4, 8, 8)
    torch.manual_seed(0)
    x_a, _ = module.sample_xt(c, null, k=3, batch=1)
    torch.manual_seed(0)
    x_b, t_b = module.sample_xt(c, null, k=3, batch=1)
    assert torch.equal(x_a, x_b) and t_b.item() == scheduler.timesteps[3].item()


def test_a_few_steps_train_only_cross_attention(tiny_spec, tmp_path):
    module = ESD(tiny_spec, concept="a cat", lr=1e-2, ddim_steps=4, export_dir=str(tmp_path / "out"))
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, PromptData(["a cat"], batch_size=2, steps_per_epoch=3)
    )
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2." in n for n in changed)
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_bad_esd_arguments(tiny_spec):
    with pytest.raises(IGMUError, match="unknown ESD variant 'y'"):
        ESD(tiny_spec, concept="a cat", variant="y")
    with pytest.raises(IGMUError, match="non-empty concept"):
        ESD(tiny_spec, concept="  ")
    with pytest.raises(IGMUError, match="prompt list is empty"):
        PromptData([])


def test_exported_model_records_its_training_cost(tiny_spec, tmp_path):
    from igmu_lightning.backbone import Pretrained
    from igmu_lightning.evaluation.world_eval import training_cost

    module = ESD(tiny_spec, concept="a cat", lr=1e-3, ddim_steps=2, export_dir=str(tmp_path / "out"))
    Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, PromptData(["a cat"], steps_per_epoch=1)
    )
    cost = training_cost(Pretrained(str(tmp_path / "out")).build())
    assert cost["efficiency.wall_time_s"]["value"] > 0 and cost["efficiency.peak_memory_mb"]["value"] > 100
