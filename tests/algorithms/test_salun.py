import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import SalUn
from igmu_lightning.algorithms.salun import pack_bits, unpack_bits
from igmu_lightning.data import WorldForgetRetain
from igmu_lightning.errors import IGMUError

FORGET = ["a photo of a cat", "a cat, sleeping"]
PSEUDO = ["a photo of a dog", "a dog, sleeping"]  # FORGET with cat -> dog, by hand


def images(seed: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def hand_noised(bb, images):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, drawing posterior sample, eps, t in SalUn's order."""
    x0 = bb.encode_images(images)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (len(x0),))
    abar = bb.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t, noise


def flat(named: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([named[n].flatten() for n in names])


def test_mask_is_the_top_half_of_the_absolute_summed_saliency_gradient(tiny_spec):
    module = SalUn(tiny_spec, pseudo_words={"cat": "dog"})
    bb, unet = module.backbone, module.backbone.unet
    batches = [{"forget": {"image": images(i), "prompt": FORGET}} for i in range(2)]
    torch.manual_seed(0)
    mask = module.compute_mask(batches)
    names = [n for n, _ in unet.named_parameters()]
    assert list(mask) == [f"backbone.unet.{n}" for n in names]  # the whole UNet, nothing else

    torch.manual_seed(0)
    summed = {n: torch.zeros_like(p) for n, p in unet.named_parameters()}
    summed_abs = {n: torch.zeros_like(p) for n, p in unet.named_parameters()}
    for batch in batches:
        x_t, t, noise = hand_noised(bb, batch["forget"]["image"])
        c, null = bb.encode_prompts(FORGET), bb.encode_prompts(["", ""])
        guided = (
            8.5 * unet(x_t, t, encoder_hidden_states=c).sample - 7.5 * unet(x_t, t, encoder_hidden_states=null).sample
        )
        grads = torch.autograd.grad(((guided - noise) ** 2).mean(), list(unet.parameters()))
        for n, g in zip(names, grads):
            summed[n] += g
            summed_abs[n] += g.abs()
    scores = flat(summed, names).abs()
    expected = torch.zeros_like(scores, dtype=torch.bool)
    expected[scores.topk(scores.numel() // 2).indices] = True
    got = flat({n.removeprefix("backbone.unet."): m for n, m in mask.items()}, names)
    assert torch.equal(got, expected) and int(got.sum()) == scores.numel() // 2
    wrong = torch.zeros_like(expected)  # sum |g| (not SalUn's) selects other entries: the test can tell
    wrong[flat(summed_abs, names).topk(scores.numel() // 2).indices] = True
    assert not torch.equal(got, wrong)


def test_loss_is_pseudo_matching_plus_alpha_retain_and_the_target_is_detached(tiny_spec):
    module = SalUn(tiny_spec, pseudo_words={"cat": "dog"}, alpha=0.5)
    bb, unet = module.backbone, module.backbone.unet
    f_img, r_img, retain = images(0), images(1), ["a photo of a car", "a tree"]
    torch.manual_seed(3)
    loss = module.forget_loss(f_img, FORGET) + 0.5 * module.retain_loss(r_img, retain)
    got = torch.autograd.grad(loss, [unet.conv_in.weight])[0]

    torch.manual_seed(3)
    x_t, t, _ = hand_noised(bb, f_img)  # one x_t, t, eps for both forget predictions
    target = unet(x_t, t, encoder_hidden_states=bb.encode_prompts(PSEUDO)).sample.detach()
    forget = ((unet(x_t, t, encoder_hidden_states=bb.encode_prompts(FORGET)).sample - target) ** 2).mean()
    x_r, t_r, eps_r = hand_noised(bb, r_img)
    keep = ((unet(x_r, t_r, encoder_hidden_states=bb.encode_prompts(retain)).sample - eps_r) ** 2).mean()
    expected = forget + 0.5 * keep
    assert torch.allclose(loss, expected, rtol=1e-5) and forget > 0
    assert torch.allclose(got, torch.autograd.grad(expected, [unet.conv_in.weight])[0], rtol=1e-4, atol=1e-8)


def test_masked_entries_never_move_and_the_mask_survives_a_resume(tiny_spec, tmp_path, monkeypatch):
    data = {"n_forget": 6, "n_retain": 6, "image_size": 16, "batch_size": 2, "steps_per_epoch": 4}
    module = SalUn(tiny_spec, pseudo_words={"triangle": "square"}, lr=1e-2, mask_batches=2)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = Trainer(
        max_steps=2, accumulate_grad_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, WorldForgetRetain("object", **data))
    moved = frozen = 0
    for name, p in module.named_parameters():
        keep = module.mask.get(name)
        if keep is None:
            assert torch.equal(p, before[name]), name  # text encoder and VAE are not trained
            continue
        assert torch.equal(p[~keep], before[name][~keep]), name
        moved += int((p[keep] != before[name][keep]).sum())
        frozen += int((~keep).sum())
    assert frozen > 0 and moved > 0.9 * frozen  # about half of the UNet moved, the other half not at all

    ckpt = tmp_path / "salun.ckpt"
    trainer.save_checkpoint(ckpt)
    stored = torch.load(ckpt, weights_only=True)["salun_mask"]
    assert all(bits.dtype == torch.uint8 for bits in stored.values())
    resumed = SalUn(tiny_spec, pseudo_words={"triangle": "square"}, lr=1e-2, mask_batches=2)
    monkeypatch.setattr(resumed, "compute_mask", lambda batches: pytest.fail("a resumed run recomputed its mask"))
    Trainer(
        max_steps=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    ).fit(resumed, WorldForgetRetain("object", **data), ckpt_path=ckpt)
    assert resumed.mask.keys() == module.mask.keys()
    assert all(torch.equal(resumed.mask[n], module.mask[n]) for n in module.mask)


def test_pack_bits_by_hand():
    mask = torch.tensor([1, 0, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert pack_bits(mask).tolist() == [0b10100001, 0b10000000]
    assert torch.equal(unpack_bits(pack_bits(mask.view(3, 3)), torch.Size([3, 3])), mask.view(3, 3))


def test_pseudo_prompts_replace_or_remove_the_concept_words(tiny_spec):
    words = SalUn(tiny_spec, pseudo_words={"Van Gogh": "a painter", "hollow": ""})
    assert words.pseudo_prompts(["art in the style of van gogh", "a hollow red circle, plain background"]) == [
        "art in the style of a painter",
        "a red circle, plain background",
    ]
    with pytest.raises(IGMUError, match="forget prompt 'a hollowed log' contains none of the pseudo_words"):
        words.pseudo_prompts(["a hollowed log"])
    fixed = SalUn(tiny_spec, pseudo_prompt="a photo of a person wearing clothes")
    assert fixed.pseudo_prompts(["a nude person", "nudity"]) == ["a photo of a person wearing clothes"] * 2


def test_bad_salun_arguments(tiny_spec):
    with pytest.raises(IGMUError, match="exactly one of pseudo_prompt"):
        SalUn(tiny_spec)
    with pytest.raises(IGMUError, match="exactly one of pseudo_prompt"):
        SalUn(tiny_spec, pseudo_prompt="x", pseudo_words={"a": "b"})
    with pytest.raises(IGMUError, match=r"mask_ratio must be in \(0, 1\]"):
        SalUn(tiny_spec, pseudo_prompt="x", mask_ratio=0)
    module = SalUn(tiny_spec, pseudo_prompt="a dog", alpha=0.5)
    batch = {"forget": {"image": images(0), "prompt": FORGET}}
    with pytest.raises(IGMUError, match="needs retain images"):
        module.training_step(batch, 0)
