import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from igmu_lightning.algorithms import ErasersGuidance, Receler
from igmu_lightning.algorithms.receler import concept_mask, eraser_penalty
from igmu_lightning.backbone import Pretrained, WithDelta
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler, SamplerSettings

CONCEPT = "a cat"


def small(tiny_spec, **kw) -> Receler:
    """Receler on the tiny model: its latents are 8x8, so the mask comes from the 8x8 layers."""
    kw = {"mask_resolution": 8, "advrs_iters": 1, "num_advrs_prompts": 4, "ddim_steps": 4, **kw}
    module = Receler(tiny_spec, **kw)
    module.log_dict = lambda *a, **k: None  # no trainer attached
    return module


def randomise_erasers(module: Receler, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.backbone.named_parameters():
            if ".igmu_receler.up." in name:  # a student that differs from its teacher
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def hand_probs(unet: nn.Module, x_t, t, ctx) -> list[torch.Tensor]:
    """softmax(Q K^T / sqrt(d)) of every attn2 from its own to_q / to_k weights: (B, heads, pixels, tokens)."""
    probs, handles = [], []

    def grab(attn, args, kwargs):
        h, c = args[0], kwargs["encoder_hidden_states"]
        q = F.linear(h, attn.to_q.weight).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        k = F.linear(c, attn.to_k.weight).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        probs.append(torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1))

    for name, m in unet.named_modules():
        if name.endswith("attn2"):
            handles.append(m.register_forward_pre_hook(grab, with_kwargs=True))
    with torch.no_grad():
        unet(x_t, t, encoder_hidden_states=ctx)
    for h in handles:
        h.remove()
    return probs


def hand_mask(probs, positions, res, thres):
    """The official get_mask with explicit loops (one image)."""
    chosen = [p[0] for p in probs if p.shape[2] == res * res]
    grid = torch.zeros(res, res, dtype=torch.float64)
    for p in chosen:
        for i in range(res):
            for j in range(res):
                grid[i, j] += sum(float(p[h, i * res + j, w]) for h in range(p.shape[0]) for w in positions) / (
                    p.shape[0] * len(positions) * len(chosen)
                )
    lo, hi = grid.min(), grid.max()
    return torch.tensor(
        [[1.0 if (grid[i, j] - lo) / (hi - lo) >= thres else 0.0 for j in range(res)] for i in range(res)]
    )


def hand_penalty(outs, mask16):
    """Nearest resize by index (i * src // dst), the channel mean of out^2 summed outside, over #outside."""
    terms = []
    for out in outs:
        side, src = int(out.shape[1] ** 0.5), mask16.shape[0]
        total, count = 0.0, 0
        for i in range(side):
            for j in range(side):
                if mask16[i * src // side, j * src // side] == 0:
                    total = total + (out[0, i * side + j] ** 2).mean()
                    count += 1
        terms.append(total / (count + 1e-9))
    return sum(terms) / len(terms)


def test_an_eraser_after_every_attn2_only_they_train_and_up_starts_at_zero(tiny_spec):
    module = Receler(tiny_spec)
    unet = module.backbone.unet
    attn2 = {n for n, _ in unet.named_modules() if n.endswith("attn2")}
    trained = {n.removeprefix("backbone.unet.") for n, p in module.named_parameters() if p.requires_grad}
    assert len(attn2) == 4 and trained == {f"{a}.igmu_receler.{p}.{w}" for a in attn2 for p in ("down", "up") for w in ("weight", "bias")}  # fmt: skip
    for a in attn2:
        eraser = unet.get_submodule(f"{a}.igmu_receler")
        width = unet.get_submodule(f"{a}.to_out.0").out_features
        assert eraser.down.weight.shape == (128, width) and eraser.up.weight.shape == (width, 128)
        assert not eraser.up.weight.any() and not eraser.up.bias.any() and eraser.down.weight.abs().sum() > 0
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), module.backbone.encode_prompts([CONCEPT])
    base = tiny_spec.build().unet
    assert torch.equal(unet(x, t, encoder_hidden_states=c).sample, base(x, t, encoder_hidden_states=c).sample)


def test_mask_and_penalty_equal_explicit_loops():
    torch.manual_seed(0)
    probs = [torch.softmax(torch.randn(1, 2, r * r, 7), -1) for r in (16, 8, 16, 4)]
    mask = concept_mask(probs, torch.tensor([1, 2]), 16, 0.1)
    want = hand_mask(probs, [1, 2], 16, 0.1)
    assert torch.equal(mask[0], want) and 0 < want.sum() < 256
    outs = [torch.randn(1, r * r, 5, requires_grad=True) for r in (16, 8, 4)]
    assert torch.allclose(eraser_penalty(outs, mask), hand_penalty(outs, want), rtol=1e-5)
    with pytest.raises(
        IGMUError, match=r"mask_resolution 32: no cross-attention layer has 32x32 pixels \(found \[4, 8, 16\]\)"
    ):
        concept_mask(probs, torch.tensor([1]), 32, 0.1)


def test_one_step_loss_equals_the_hand_computation(tiny_spec, monkeypatch):
    module = small(tiny_spec)
    randomise_erasers(module)
    bb = module.backbone
    c, null = bb.encode_prompts([CONCEPT]), bb.encode_prompts([""])
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([637])
    monkeypatch.setattr(module, "sample_xt", lambda *a: (x_t, t))
    delta0 = torch.rand(1, 4, c.shape[-1])
    d = nn.Parameter(delta0.clone())
    module.adversaries[CONCEPT] = (d, torch.optim.Adam([d], lr=0.1, weight_decay=0.1))
    loss = module.training_step({"prompt": [CONCEPT]}, 0)

    frozen = tiny_spec.build().unet  # the independent teacher: a fresh base UNet
    student, outs = copy.deepcopy(frozen), []
    for name, m in student.named_modules():  # the erasers by hand: a + up(gelu(down(a)))
        if name.endswith("attn2"):
            er = bb.unet.get_submodule(f"{name}.igmu_receler")

            def hook(mod, args, out, er=er):
                outs.append(F.linear(F.gelu(F.linear(out, er.down.weight, er.down.bias)), er.up.weight, er.up.bias))
                return out + outs[-1]

            m.register_forward_hook(hook)
    n = len(bb.tokenizer(CONCEPT, add_special_tokens=False)["input_ids"])  # "a cat": 2 word tokens
    cond = c.clone()
    cond[:, 1 + n : 1 + n + 4] = delta0  # the fix: delta reaches the conditioning
    cond.requires_grad_(True)
    e_n = student(x_t, t, encoder_hidden_states=cond).sample
    with torch.no_grad():
        e0, ec = frozen(x_t, t, encoder_hidden_states=null).sample, frozen(x_t, t, encoder_hidden_states=c).sample
    mask = hand_mask(hand_probs(frozen, x_t, t, c), list(range(1, 1 + n)), 8, 0.1)
    want = F.mse_loss(e_n, e0 - 1.0 * (ec - e0)) + 0.1 * hand_penalty(outs, mask)
    assert n == 2 and torch.allclose(loss, want, rtol=1e-5)
    # the attack step: Adam's first step is lr * sign(g + wd * delta)
    (g,) = torch.autograd.grad(F.mse_loss(e_n, ec), [cond])
    step = 0.1 * torch.sign(g[:, 1 + n : 1 + n + 4] + 0.1 * delta0)
    assert torch.allclose(d.detach(), delta0 - step, atol=1e-5) and not torch.equal(d.detach(), delta0)
    loss.backward()
    grads = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(".igmu_receler." in n for n in grads)


def test_the_adversarial_embeddings_reach_the_unet(tiny_spec):
    # The official write lands in a copy: emb_n[:, idx, :].data = x leaves emb_n as it was (train_receler.py:149).
    emb, idx = torch.zeros(1, 6, 3), torch.arange(2, 4)
    emb[:, idx, :].data = torch.ones(1, 2, 3)
    assert not emb.any()
    # Ours: every attack forward is conditioned on E(c) with the current delta after the word tokens.
    module = small(tiny_spec, advrs_iters=3)
    seen = []
    module.backbone.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"].detach().clone()), with_kwargs=True
    )
    torch.manual_seed(0)
    deltas = []
    real = module.adversary

    def spy(concept, c):
        delta, opt = real(concept, c)
        deltas.append(delta.detach().clone())
        return delta, opt

    module.adversary = spy
    module.training_step({"prompt": [CONCEPT]}, 0)
    delta = module.adversaries[CONCEPT][0].detach()
    c = module.backbone.encode_prompts([CONCEPT])
    attack = [s for s in seen if s.shape[0] == 1][-3:]  # the three attack forwards (the sampler's are CFG pairs)
    assert all(
        torch.equal(s[:, :3], c[:, :3]) and torch.equal(s[:, 7:], c[:, 7:]) for s in attack
    )  # sot, "a", "cat"; the rest
    assert torch.equal(attack[0][:, 3:7], deltas[0][0:1])  # the initial delta, U[0, 1)
    assert not torch.allclose(attack[0][:, 3:7], c[:, 3:7]) and not torch.equal(attack[1], attack[2])
    assert not torch.equal(attack[2][:, 3:7], delta)  # the last forward used delta before its last update


def test_the_export_samples_with_the_erasers_as_the_trained_model_does(tiny_spec, tmp_path):
    module = small(tiny_spec)
    randomise_erasers(module)
    module.export_model(tmp_path / "out")
    assert (tmp_path / "out" / "igmu_erasers.safetensors").is_file()
    settings = SamplerSettings(steps=3, guidance_scale=3.0)

    def image(bb):
        return Sampler(bb, settings).sample_embeddings(bb.encode_prompts([CONCEPT]), [1])

    trained, base = image(module.backbone), image(tiny_spec.build())
    loaded = Pretrained(str(tmp_path / "out")).build()
    assert isinstance(loaded.guidance, ErasersGuidance)
    assert torch.equal(image(loaded), trained) and (trained - base).abs().max() > 1e-3
    assert torch.equal(image(WithDelta(str(tmp_path / "out")).build()), trained)
    # the loaded model's UNet itself holds the erasers: a direct call (an attack's) equals the trained one
    x, t, c = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([500]), loaded.encode_prompts([CONCEPT])
    with torch.no_grad():
        direct = [bb.unet(x, t, encoder_hidden_states=c).sample for bb in (loaded, module.backbone, tiny_spec.build())]
    assert torch.allclose(direct[0], direct[1], atol=1e-6) and (direct[0] - direct[2]).abs().max() > 1e-4
    assert torch.equal(image(loaded), trained)  # bound erasers are not applied twice by the sampler
    (tmp_path / "out" / "igmu_erasers.safetensors").unlink()
    with pytest.raises(IGMUError, match="is missing: it holds Receler's erasers"):
        Pretrained(str(tmp_path / "out")).build()


def test_resume_restores_the_adversary(tiny_spec):
    module = small(tiny_spec, advrs_iters=2)
    torch.manual_seed(0)
    module.training_step({"prompt": [CONCEPT]}, 0)
    again = small(tiny_spec, advrs_iters=2)
    again.load_resume_state(module.resume_state())
    (a, opt_a), (b, opt_b) = module.adversaries[CONCEPT], again.adversaries[CONCEPT]
    assert torch.equal(a, b) and opt_b.state_dict()["state"][0]["step"] == opt_a.state_dict()["state"][0]["step"] == 2


def test_bad_input_is_one_line(tiny_spec):
    with pytest.raises(IGMUError, match="batch size 1"):
        small(tiny_spec).training_step({"prompt": [CONCEPT, "a dog"]}, 0)
    with pytest.raises(IGMUError, match="do not fit in 77 positions"):
        small(tiny_spec, num_advrs_prompts=80).training_step({"prompt": [CONCEPT]}, 0)
    with pytest.raises(IGMUError, match="no cross-attention layer has 16x16"):
        small(tiny_spec, mask_resolution=16).training_step({"prompt": [CONCEPT]}, 0)
    with pytest.raises(IGMUError, match="advrs_iters >= 0"):
        Receler(tiny_spec, advrs_iters=-1)
