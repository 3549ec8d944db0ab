import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from igmu_lightning.algorithms import SPM, SPMGate
from igmu_lightning.algorithms.spm import gate_weights, sample_anchors
from igmu_lightning.backbone import Pretrained
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.adapters import LoRA
from igmu_lightning.sampling import Sampler, SamplerSettings


def transformer_layers(unet) -> set[str]:
    """Every Linear / Conv2d inside a Transformer2DModel, by the official rule (spm.py:149-159)."""
    return {f"{name}.{child}" for name, module in unet.named_modules() if type(module).__name__ == "Transformer2DModel"
            for child, sub in module.named_modules() if type(sub).__name__ in ("Linear", "Conv2d")}  # fmt: skip


def test_rank1_adapters_on_every_transformer_layer_only_they_train_and_up_starts_at_zero(tiny_spec):
    expected = transformer_layers(tiny_spec.build().unet)
    module = SPM(tiny_spec)
    unet = module.backbone.unet
    wrapped = {n for n, m in unet.named_modules() if hasattr(m, "lora_A") and "spm" in m.lora_A}
    assert wrapped == expected and len(expected) > 20
    trained = {n.removeprefix("backbone.") for n, p in module.named_parameters() if p.requires_grad}
    assert trained == {f"unet.{n}.lora_{ab}.spm.weight" for n in expected for ab in "AB"}
    for name in expected:
        layer = unet.get_submodule(name)
        a, b = layer.lora_A["spm"].weight, layer.lora_B["spm"].weight
        assert a.shape[0] == 1 and b.shape[1] == 1 and not b.any() and a.abs().sum() > 0  # rank 1, up zero, down random
        assert layer.scaling["spm"] == 1.0  # alpha / rank
        fan_in = a[0].numel()  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert a.abs().max() <= 1 / fan_in**0.5 + 1e-6
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), module.backbone.encode_prompts(["a cat"])
    base = tiny_spec.build().unet
    assert torch.allclose(
        unet(x, t, encoder_hidden_states=c).sample, base(x, t, encoder_hidden_states=c).sample, atol=1e-6
    )


def test_one_step_loss_equals_the_hand_computation(tiny_spec):
    module = SPM(tiny_spec, anchors=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # a student that differs from its teacher
    frozen = tiny_spec.build().unet  # the independent teacher: a fresh base UNet
    student = copy.deepcopy(module.backbone.unet)
    bb = module.backbone
    c, null = bb.encode_prompts(["a cat"]), bb.encode_prompts([""])
    torch.manual_seed(1)
    x_t, t = module.sample_xt(c, null, k=7)
    torch.manual_seed(2)
    anchors = module.anchor_contexts(c, null)
    loss, erase, anchoring = module.spm_loss(x_t, t, c, null, anchors)
    assert t.tolist() == [999 - int(7 * 1000 / 30)]  # train_spm.py:190-194 with the official DDIM
    torch.manual_seed(2)
    a = sample_anchors(c[0], 4)
    with torch.no_grad():
        e = lambda net, x, ctx: net(x, t.expand(len(x)), encoder_hidden_states=ctx).sample  # noqa: E731
        # the official predict_noise at scale 1 on [u, a1, u, a2, u, a3, u, a4] with the latents repeated
        ctx = torch.cat([torch.cat([null, ai[None]]) for ai in a])
        both_s, both_f = e(student, x_t.repeat(8, 1, 1, 1), ctx), e(frozen, x_t.repeat(8, 1, 1, 1), ctx)
        s1, s2 = both_s.chunk(2)
        f1, f2 = both_f.chunk(2)
        anchor_hand = F.mse_loss(s1 + 1 * (s2 - s1), f1 + 1 * (f2 - f1))
        e0, ec = e(frozen, x_t, null), e(frozen, x_t, c)
        erase_hand = F.mse_loss(e(student, x_t, c), e0 - 1.0 * (ec - e0))
    assert torch.allclose(erase, erase_hand, rtol=1e-4, atol=1e-8)
    assert torch.allclose(anchoring, anchor_hand, rtol=1e-3, atol=1e-9)
    assert torch.allclose(loss, erase_hand + 1000 * anchor_hand, rtol=1e-3)
    loss.backward()
    grads = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(".lora_" in n for n in grads)


def test_xt_is_sampled_with_the_adapter_on(tiny_spec):
    module = SPM(tiny_spec)
    bb = module.backbone
    c, null = bb.encode_prompts(["a cat"]), bb.encode_prompts([""])
    torch.manual_seed(5)
    off, _ = module.sample_xt(c, null, k=5)
    with torch.no_grad():
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    torch.manual_seed(5)
    on, _ = module.sample_xt(c, null, k=5)
    assert not torch.allclose(on, off, atol=1e-4)


def test_anchors_are_kept_with_probability_one_minus_cos_and_rescaled():
    torch.manual_seed(0)
    target = torch.tensor([[3.0, 4.0]])  # 2-d: cos of a uniform direction is spread over [-1, 1]
    anchors = sample_anchors(target, 2000)
    norms = anchors.flatten(1).norm(dim=1)
    assert anchors.shape == (2000, 1, 2) and norms.min() >= 0.8 * 5 - 1e-4 and norms.max() <= 1.2 * 5 + 1e-4
    cos = F.cosine_similarity(anchors.flatten(1), target.flatten()[None], dim=1)
    # kept when U(0, 1) < 1 - cos, i.e. with probability min(1, 1 - cos); for a uniform angle in 2-d:
    # E[cos | kept] = E[cos min(1, 1 - cos)] / E[min(1, 1 - cos)] = (-1/4) / (1 - 1/pi) = -0.367
    assert abs(cos.mean().item() - (-0.25 / (1 - 1 / torch.pi))) < 0.03


def test_gate_weight_is_the_max_of_embedding_cosine_and_token_overlap(tiny_spec):
    bb = tiny_spec.build()
    tok = bb.tokenizer
    prompts, concepts = ["a red cat", "a dog on grass", "cat"], ["red cat", "grass"]
    e, ec = bb.encode_prompts(prompts), bb.encode_prompts(concepts)
    got = gate_weights(tok, e, prompts, ec, concepts)
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    for i, p in enumerate(prompts):
        ps = set(tok(p).input_ids) - special
        best = 0.0
        for j, c in enumerate(concepts):
            cs = set(tok(c).input_ids) - special
            cos = (e[i].flatten() @ ec[j].flatten() / (e[i].norm() * ec[j].norm())).item()
            best = max(best, cos, len(ps & cs) / len(cs))
        assert got[i].item() == pytest.approx(best, abs=1e-5)
    assert got[2].item() >= 0.5 - 1e-6  # "cat" holds half of "red cat"
    only_cos = gate_weights(tok, e, None, ec, concepts)  # from embeddings: no tokens to count
    assert (only_cos <= got + 1e-6).all()
    with pytest.raises(IGMUError, match="needs the prompts"):
        gate_weights(tok, e, None, ec, concepts, metric="tokenuni")


def test_exported_model_gates_each_prompt_of_a_batch_like_a_hand_scaled_adapter(tiny_spec, tmp_path):
    module = SPM(tiny_spec)
    module.concepts = ["a cat"]
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    trained = {n: p.detach().clone() for n, p in module.backbone.unet.named_parameters() if ".lora_" in n}
    module.export_model(tmp_path / "spm")
    loaded = Pretrained(str(tmp_path / "spm")).build()
    assert isinstance(loaded.guidance, SPMGate) and loaded.hashes() == tiny_spec.build().hashes()  # base weights
    settings = SamplerSettings(steps=3, guidance_scale=5.0)
    prompts = ["a cat", "a green square"]
    gated = Sampler(loaded, settings).generate(prompts, seeds=[1, 2]).images

    def hand(prompt: str, seed: int) -> torch.Tensor:
        plain = tiny_spec.build()
        special = set(plain.tokenizer.all_special_ids)
        ids = [set(plain.tokenizer(x).input_ids) - special for x in (prompt, "a cat")]
        e = plain.encode_prompts([prompt, "a cat"]).flatten(1)
        m = max((e[0] @ e[1] / (e[0].norm() * e[1].norm())).item(), len(ids[0] & ids[1]) / len(ids[1]))
        names = "|".join(re.escape(n) for n in sorted(transformer_layers(plain.unet)))
        plain.attach(LoRA(targets=names, rank=1, alpha=1.0, name="spm"))
        with torch.no_grad():  # the official inference: every adapter tensor times m
            for n, p in plain.unet.named_parameters():
                if n in trained:
                    p.copy_(trained[n] * m)
        return Sampler(plain, settings).generate([prompt], seeds=[seed]).images[0], m

    weights = []
    for i, (prompt, seed) in enumerate(zip(prompts, [1, 2])):
        expected, m = hand(prompt, seed)
        weights.append(m)
        assert torch.allclose(gated[i], expected, atol=2e-5), (prompt, m, (gated[i] - expected).abs().max())
    assert weights[0] == pytest.approx(1.0) and weights[1] < 0.99  # the concept prompt at full weight
    ungated = Sampler(tiny_spec.build(), settings).generate(prompts, seeds=[1, 2]).images
    assert not torch.allclose(gated[0], ungated[0], atol=1e-3)  # the adapter does act


def test_bad_arguments_and_files_are_one_line_errors(tiny_spec, tmp_path):
    with pytest.raises(IGMUError, match="unknown SPM gate_metric 'cos'"):
        SPM(tiny_spec, gate_metric="cos")
    with pytest.raises(IGMUError, match="image size >= 128"):
        SPM(tiny_spec, dynamic_resolution=True).random_size()
    with pytest.raises(IGMUError, match="anchors >= 1"):
        SPM(tiny_spec, anchors=0)
    module = SPM(tiny_spec)
    with pytest.raises(IGMUError, match="non-empty concept"):
        module.training_step({"prompt": [" "]}, 0)
    with pytest.raises(IGMUError, match="run at least one training step"):
        module.export_model(tmp_path / "none")
    module.concepts = ["a cat"]
    module.export_model(tmp_path / "spm")
    (tmp_path / "spm" / "igmu_spm.safetensors").unlink()
    with pytest.raises(IGMUError, match="igmu_spm.safetensors' is missing"):
        Pretrained(str(tmp_path / "spm")).build()
    assert isinstance(SPMGate(["x"]), SPMGate)
    with pytest.raises(IGMUError, match="non-empty concepts"):
        SPMGate([])


def test_lr_schedule_is_cosine_with_hard_restarts_after_warmup(tiny_spec):
    from lightning.pytorch import Trainer

    module = SPM(tiny_spec, warmup_steps=10, lr_cycles=3)
    module.trainer = Trainer(max_steps=100, logger=False)  # what configure_optimizers reads
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 1e-4
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[10] == pytest.approx(1e-4) and lrs[40] == pytest.approx(1e-4)  # restart at 10 + 30
    assert lrs[39] < 1e-6 and isinstance(module.backbone.unet, nn.Module)


def test_fit_trains_the_adapter_only_and_exports_a_gated_model(tiny_spec, tmp_path):
    from lightning.pytorch import Trainer

    from igmu_lightning.data import PromptData

    module = SPM(tiny_spec, ddim_steps=4, warmup_steps=0, export_dir=str(tmp_path / "spm"))
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, PromptData(["a cat"], batch_size=1, steps_per_epoch=2))
    moved = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".lora_" in n for n in moved) and module.concepts == ["a cat"]
    gate = Pretrained(str(tmp_path / "spm")).build().guidance
    assert isinstance(gate, SPMGate) and gate.concepts == ["a cat"] and gate.power == 2.0
    assert module.resume_state() == {"concepts": ["a cat"]}
