"""Relearning: a copy is fine-tuned, never the model itself; each checkpoint's copy equals a
hand-run of the same steps; the step count to half the original's rate is read off the curve."""

import copy

import pytest
import torch
import torch.nn.functional as F

from igmu_lightning.attacks import AttackContext
from igmu_lightning.attacks.concept_images import world_concept_images
from igmu_lightning.attacks.relearning import Relearning
from igmu_lightning.errors import IGMUError


@pytest.fixture(scope="module")
def model(tiny_spec):
    return tiny_spec.build().eval()


def test_relearning_changes_only_a_copy_and_only_the_chosen_weights(model):
    hashes = model.hashes()
    relearning = Relearning(world_target="object", preset="quick", checkpoints=(0, 2), batch_size=2, n_images=4, lr=1e-2)
    states = {}
    for k, relearned in relearning.relearn(model, seed=0):
        assert relearned is not model
        states[k] = {n: t.clone() for n, t in relearned.state_dict().items()}
    assert model.hashes() == hashes
    changed = {n for n in states[0] if not torch.equal(states[0][n], states[2][n])}
    assert changed and all(".attn2." in n and n.startswith("unet.") for n in changed)
    assert {n for n in states[0] if torch.equal(states[0][n], model.state_dict()[n])} == set(states[0])  # k = 0: the model as given
    unet = Relearning(world_target="object", trainable="unet", checkpoints=(1,), batch_size=2, n_images=4, lr=1e-2)
    (_, whole), = list(unet.relearn(model))
    assert any(not torch.equal(t, model.state_dict()[n]) for n, t in whole.state_dict().items() if n.startswith("unet.conv_in"))
    assert model.hashes() == hashes


def test_checkpoints_equal_a_hand_run(model):
    relearning = Relearning(world_target="object", checkpoints=(0, 1, 3), batch_size=2, n_images=4, lr=1e-2)
    got = {k: {n: t.clone() for n, t in m.unet.state_dict().items()} for k, m in relearning.relearn(model, seed=7)}
    hand = hand_relearn(model, (0, 1, 3), seed=7, batch_size=2, n_images=4, lr=1e-2)
    assert set(hand) == set(got)
    for k in got:
        for n, tensor in hand[k].items():
            assert torch.equal(tensor, got[k][n]), (k, n)


def hand_relearn(model, checkpoints, seed, batch_size, n_images, lr, target="object") -> dict[int, dict]:
    """The relearning steps written out: draws in the documented order (images, posterior, noise,
    timesteps), Adam on the cross-attention; k -> the UNet's state after k steps."""
    images, captions, _ = world_concept_images(target, n_images, model.image_size, seed=seed)
    hand = copy.deepcopy(model)
    params = [p for n, p in hand.unet.named_parameters() if ".attn2." in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    states = {}
    for step in range(max(checkpoints) + 1):
        if step in checkpoints:
            states[step] = {n: t.detach().clone() for n, t in hand.unet.state_dict().items()}
        if step == max(checkpoints):
            break
        pick = torch.randint(n_images, (batch_size,), generator=g)
        with torch.no_grad():
            cond = hand.encode_prompts([captions[i] for i in pick.tolist()])
            latents = hand.encode_images(images[pick], g)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, hand.noise_scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        pred = hand.unet(hand.noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return states

def test_settings_are_checked(model):
    with pytest.raises(IGMUError, match="needs images of the concept"):
        Relearning()
    with pytest.raises(IGMUError, match="trainable 'text' is unknown"):
        Relearning(world_target="object", trainable="text")
    with pytest.raises(IGMUError, match="checkpoints must be step counts >= 0"):
        Relearning(world_target="object", checkpoints=(-1, 10))
    with pytest.raises(IGMUError, match="changes the model, not the prompts"):
        Relearning(world_target="object").run(AttackContext(model, ["a triangle"], [0]))
    images = torch.rand(3, 3, 20, 20)
    relearning = Relearning(images=images, concept="triangle")
    got, captions = relearning.training_data(model)
    assert got.shape == (3, 3, 16, 16) and captions == ["a photo of a triangle"] * 3
    assert relearning.to_config()["init_args"]["images"] == "tensor (3, 3, 20, 20)"
