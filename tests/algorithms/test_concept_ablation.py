import copy
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer

from igmu_lightning.algorithms import AnchorData, ConceptAblation
from igmu_lightning.algorithms.anchors import anchor_items
from igmu_lightning.algorithms.concept_ablation import Prior
from igmu_lightning.backbone import TinySD
from igmu_lightning.data import load_image
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.params import select_parameters
from igmu_lightning.sampling import Sampler, SamplerSettings


def make(spec, **kwargs) -> ConceptAblation:
    return ConceptAblation(spec, target="triangle", **{"anchor": "square", **kwargs})


def anchors(tmp_path, prompts=("a red square", "a blue square"), **kwargs) -> AnchorData:
    """Quick anchors (2 sampler steps; the real settings are tested apart), batches of 2."""
    kwargs = {"images_per_prompt": 1, "generation_batch_size": 2, "batch_size": 2, "steps_per_epoch": 4, **kwargs}
    data = AnchorData(list(prompts), anchor_dir=str(tmp_path / "anchors"), **kwargs)
    data.sampling = replace(data.sampling, steps=2)
    return data


def fit(module: ConceptAblation, data: AnchorData, steps: int = 1) -> None:
    Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(module, data)


def q_sample(module, x0, noise, t):
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, from the schedule's cumulative alphas."""
    a = module.backbone.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)


def moved_student(spec, **kwargs) -> ConceptAblation:
    """A module whose trained tensors moved off the base: the anchor prediction must come from them."""
    module = make(spec, **kwargs)
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return module


def test_loss_maps_the_target_prediction_onto_the_same_models_anchor_prediction(tiny_spec):
    module = moved_student(tiny_spec, reduction="mean")
    unet = copy.deepcopy(module.backbone.unet)  # an independent copy of the live (trained) UNet
    (x0, noise), t = batch(0), torch.tensor([10, 900])
    c_a = module.backbone.encode_prompts(["a red square", "a blue square"])
    c_t = module.backbone.encode_prompts(["a red triangle", "a blue triangle"])
    x_t = q_sample(module, x0, noise, t)
    with torch.no_grad():
        e_target = unet(x_t, t, encoder_hidden_states=c_t).sample
        expected = ((e_target - unet(x_t, t, encoder_hidden_states=c_a).sample) ** 2).mean()
        with_frozen_anchor = ((e_target - module.teacher(x_t, t, c_a).sample) ** 2).mean()
    loss, ablation, prior = module.ablation_loss(x0, c_a, c_t, t, noise)
    assert prior is None and torch.allclose(loss, expected, rtol=1e-5) and torch.equal(loss, ablation)
    assert not torch.allclose(expected, with_frozen_anchor, rtol=1e-3)  # a frozen anchor would be caught

    module.prior_weight = 0.5  # the prior term adds w * L_DM on other anchor images with their prompts
    (p0, p_noise), p_t = batch(1), torch.tensor([500, 3])
    c_p = module.backbone.encode_prompts(["a green square", "a yellow square"])
    with torch.no_grad():
        e_prior = unet(q_sample(module, p0, p_noise, p_t), p_t, encoder_hidden_states=c_p).sample
        expected_prior = ((e_prior - p_noise) ** 2).mean()
    loss, ablation, prior = module.ablation_loss(x0, c_a, c_t, t, noise, Prior(p0, c_p, p_t, p_noise))
    assert torch.allclose(ablation, expected, rtol=1e-5) and torch.allclose(prior, expected_prior, rtol=1e-5)
    assert torch.allclose(loss, expected + 0.5 * expected_prior, rtol=1e-5)


def test_the_official_masked_reduction_by_hand(tiny_spec):
    """diffusers/train.py: ((mse * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean() with a (B, 1, h, w)
    mask that is 0 on a one-latent-pixel border: 4 latent channels make it 4x the masked mean."""
    module = make(tiny_spec)  # reduction: official (the default)
    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    inner = (pred - target)[:, :, 1:7, 1:7] ** 2  # the 6 x 6 pixels inside the border
    by_hand = torch.stack([inner[b].sum() / 36 for b in range(2)]).mean()
    assert torch.allclose(module.masked_mse(pred, target), by_hand, rtol=1e-6)
    assert torch.allclose(by_hand, 4 * inner.mean(), rtol=1e-6)  # 4x the per-element mean inside
    border_only = target.clone()
    border_only[:, :, 1:7, 1:7] = pred[:, :, 1:7, 1:7]
    assert module.masked_mse(pred, border_only) == 0  # errors on the border do not count
    assert make(tiny_spec, reduction="mean").masked_mse(pred, border_only) > 0
    with pytest.raises(IGMUError, match="unknown ConceptAblation reduction 'sum'"):
        make(tiny_spec, reduction="sum")


def test_anchor_prompts_file_adds_its_prompts_when_the_data_is_prepared(tiny_spec, tmp_path):
    """The official recipes read their anchor prompts from a file (assets/finetune_prompts/*.txt)."""
    file = tmp_path / "people.txt"
    file.write_text("a red square\n\n a blue square on a plain background \n")
    data = AnchorData(["a red square", "a green square"], prompts_file=str(file))
    assert data._prompts is None  # not read when the config is parsed
    assert data.prompts() == ["a red square", "a green square", "a blue square on a plain background"]
    file.write_text("a green circle\n")  # no anchor word: refused like a listed prompt, before any image
    with pytest.raises(IGMUError, match="lacks the anchor word"):
        fit(make(tiny_spec), anchors(tmp_path, prompts=[], prompts_file=str(file)))
    assert not (tmp_path / "anchors").exists()
    with pytest.raises(IGMUError, match="text file 'nope.txt' does not exist: give the path of a file"):
        AnchorData(prompts_file="nope.txt").prompts()


def test_the_anchor_prediction_carries_no_gradient(tiny_spec):
    module = moved_student(tiny_spec, reduction="mean")
    unet, params = module.backbone.unet, module.trainable_parameters()
    (x0, noise), t = batch(2), torch.tensor([100, 700])
    c_a, c_t = module.backbone.encode_prompts(["a red square", "a red triangle"]).repeat_interleave(2, 0).chunk(2)
    grads = torch.autograd.grad(module.ablation_loss(x0, c_a, c_t, t, noise)[0], params)
    x_t = q_sample(module, x0, noise, t)
    pred, anchor = unet(x_t, t, encoder_hidden_states=c_t).sample, unet(x_t, t, encoder_hidden_states=c_a).sample
    detached = torch.autograd.grad(F.mse_loss(pred, anchor.detach()), params, retain_graph=True)
    through_both = torch.autograd.grad(F.mse_loss(pred, anchor), params)
    assert all(torch.allclose(g, d, rtol=1e-4, atol=1e-8) for g, d in zip(grads, detached))
    assert not all(torch.allclose(g, b, rtol=1e-4, atol=1e-8) for g, b in zip(grads, through_both))


def test_target_prompts_in_object_and_style_mode(tiny_spec):
    obj = make(tiny_spec)
    assert obj.target_prompt("a red square on a dotted background") == "a red triangle on a dotted background"
    assert obj.target_prompt("a Square beside a square") == "a triangle beside a triangle"
    attribute = make(tiny_spec, anchor=["red", "blue"])
    attribute.target = "hollow {}"  # an unsaid anchor ("filled"): the target goes in front of the colour
    new = attribute.target_prompt("a plain background with a blue cross")
    assert new == "a plain background with a hollow blue cross"
    style = ConceptAblation(tiny_spec, target="van gogh", mode="style")
    assert [style.target_prompt("a painting of a house", k) for k in range(3)] == [
        "a painting of a house, in the style of van gogh",
        "in van gogh's style, a painting of a house",
        "in van gogh's style, a painting of a house",  # the official code's odds: 1 : 2
    ]


def test_bad_concept_ablation_arguments(tiny_spec):
    with pytest.raises(IGMUError, match="anchor prompt 'two squares' lacks the anchor word"):
        make(tiny_spec).check_anchor_prompts(["a red square", "two squares"])  # a whole word, not a substring
    for empty in ([], ["  "]):
        with pytest.raises(IGMUError, match="AnchorData has no anchor prompts"):
            AnchorData(empty)
    with pytest.raises(IGMUError, match="unknown anchor_sampler 'dpm'"):
        AnchorData(["a red square"], anchor_sampler="dpm")
    with pytest.raises(IGMUError, match="set anchor"):
        make(tiny_spec, anchor=None)
    with pytest.raises(IGMUError, match="unknown ConceptAblation mode 'objects'"):
        make(tiny_spec, mode="objects")
    with pytest.raises(IGMUError, match=r"style template '\{p\} by t' needs"):
        make(tiny_spec, mode="style", style_templates=["{p} by t"])


def test_anchor_images_are_made_once_by_the_frozen_model_and_remade_when_their_inputs_change(tiny_spec, tmp_path):
    anchor_dir = tmp_path / "anchors"
    # the official diffusers code's anchors: DPMSolverMultistep, 25 steps, CFG 6
    official = SamplerSettings(steps=25, guidance_scale=6.0, scheduler="dpm++", negative_prompt="a cat")
    assert AnchorData(["a red square"], negative_prompt="a cat").sampling == official
    compvis = AnchorData(["a red square"], anchor_sampler="compvis").sampling
    assert (compvis.scheduler, compvis.steps, compvis.eta, compvis.guidance_scale) == ("ddim", 200, 1.0, 6.0)
    module, first = make(tiny_spec), anchors(tmp_path, negative_prompt="a cat")
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    fit(module, first)
    assert first.generated == 2
    manifest = json.loads((anchor_dir / "manifest.json").read_text())
    assert [(m["prompt"], m["seed"]) for m in manifest["images"]] == first.items()
    assert manifest["sampler"] == asdict(first.sampling) and manifest["sampler"]["negative_prompt"] == "a cat"
    assert manifest["base_hashes"] == tiny_spec.build().hashes() and len(list(anchor_dir.rglob("*.png"))) == 2
    # an anchor image is the base model's sample for its prompt and seed
    item = manifest["images"][1]
    sampler = Sampler(tiny_spec.build(), first.sampling)
    again = sampler.sample_batch([item["prompt"]], [item["seed"]], pad_to=2)[0]
    assert torch.allclose(load_image(anchor_dir / item["file"]), again, atol=1 / 255 + 1e-6)
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)  # the default set

    # a second run's prepare_data finds every image in the cache: nothing is generated or rewritten
    stamps = {p: p.stat().st_mtime_ns for p in anchor_dir.rglob("*") if p.is_file()}
    second = anchors(tmp_path, negative_prompt="a cat")
    fit(make(tiny_spec), second)
    assert second.generated == 0 and stamps == {p: p.stat().st_mtime_ns for p in anchor_dir.rglob("*") if p.is_file()}

    third = anchors(tmp_path, prompts=["a red square", "a green square"], negative_prompt="a cat")
    fit(make(tiny_spec), third)
    assert third.generated == 1  # only the new prompt's image
    manifest = json.loads((anchor_dir / "manifest.json").read_text())
    assert manifest["prompts"] == ["a red square", "a green square"] and len(manifest["images"]) == 2
    assert all((anchor_dir / m["file"]).is_file() for m in manifest["images"])

    other_base = anchors(tmp_path, negative_prompt="a cat")
    fit(make(TinySD(seed=1, image_size=16)), other_base)
    assert other_base.generated == 2


def test_anchors_are_made_in_prepare_data_and_setup_only_reads_them(tiny_spec, tmp_path, monkeypatch):
    """Lightning calls prepare_data on rank 0 (of each node) only; every rank's setup reads the images."""
    calls = []
    real = Sampler.sample_batch
    monkeypatch.setattr(Sampler, "sample_batch", lambda self, *a, **k: calls.append(a[0]) or real(self, *a, **k))
    module, data = make(tiny_spec), anchors(tmp_path, prompts=["a red square", "a blue square", "a green square"])
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    data.trainer = trainer
    with pytest.raises(IGMUError, match="missing: share anchor_dir across ranks"):
        data.setup("fit")  # setup never generates
    assert not calls
    data.prepare_data()
    assert data.generated == 3 and len(calls) == 2  # batches of generation_batch_size 2
    data.setup("fit")
    assert [prompt for _, prompt in data.images.files] == ["a red square", "a blue square", "a green square"]
    assert [(p, s) for p, s in anchor_items(data.prompts(), 1)] == data.items()
    data.prepare_data()  # cached: a second prepare makes nothing
    assert data.generated == 0 and len(calls) == 2


def test_training_step_reads_the_anchor_images_and_prompts_from_the_batch(tiny_spec, tmp_path):
    """The batch's prompts give the target prompts and its images the latents: another prompt or
    another image in the batch is another loss."""
    module, data = make(tiny_spec, reduction="mean"), anchors(tmp_path, prompts=["a red square", "a blue square"])
    fit(module, data)  # makes the anchors and sets the module up
    batch = data.draw_batch(2)
    module.log = lambda *args, **kwargs: None  # outside a Trainer loop

    def loss(b) -> float:
        module._latents, module._rng = {}, torch.Generator().manual_seed(0)
        return module.training_step(b, 0).item()

    same = loss(batch)
    assert loss(dict(batch)) == same
    assert loss({**batch, "prompt": ["a red square on a dotted background", "a square"]}) != same
    assert loss({**batch, "image": batch["image"].flip(-2)}) != same


def test_the_loader_state_resumes_the_anchor_draws(tiny_spec, tmp_path):
    """A checkpoint keeps the generator's state and the batches handed out: a resumed loader draws
    the batches the uninterrupted one would have, the module's draws between batches included."""
    data = anchors(tmp_path, steps_per_epoch=5)
    fit(make(tiny_spec), data)

    def run(stop=None, state=None):
        data.setup("fit")  # seeds the generator afresh, as a new process would
        loader, seen = data.train_dataloader(), []
        if state is not None:
            loader.load_state_dict(state)
        for batch in loader:
            seen.append(batch["index"].tolist() + batch["flip"].tolist())
            torch.rand(3, generator=data.generator)  # the module's draws in its step
            if len(seen) == stop:
                return seen, loader.state_dict()  # a checkpoint after that step
        return seen, None

    whole, _ = run()
    first, state = run(stop=2)
    rest, _ = run(state=state)
    assert len(whole) == 5 and first == whole[:2] and rest == whole[2:]
    assert run(state={**state, "consumed": 5})[0] != whole  # an ended epoch: a new one, from the saved state


def test_a_few_steps_train_only_the_chosen_tensors_and_export(tiny_spec, tmp_path):
    module = make(tiny_spec, trainable=["attn"], prior_weight=1.0, lr=1e-2, export_dir=str(tmp_path / "out"))
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    fit(module, anchors(tmp_path, hflip=True), steps=3)
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    attn = set(select_parameters(module.backbone, ["attn"]))
    assert changed and changed <= attn and any(".attn1." in n for n in changed)
    assert (tmp_path / "out" / "model_index.json").is_file()


class GeneratedPerRank(Callback):
    """Writes how many anchor images each rank's data module generated."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.folder, f"generated{trainer.global_rank}.txt").write_text(str(trainer.datamodule.generated))


def test_two_ddp_processes_train_on_the_anchors_rank_0_made(tiny_spec, tmp_path):
    module = make(tiny_spec, prior_weight=1.0, lr=1e-2, export_dir=str(tmp_path / "out"))
    data = anchors(tmp_path, prompts=["a red square", "a blue square", "a green square"], generation_batch_size=1)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      callbacks=[GeneratedPerRank(str(tmp_path))])  # fmt: skip
    trainer.fit(module, data)
    manifest = json.loads((tmp_path / "anchors" / "manifest.json").read_text())
    assert len(manifest["images"]) == 3 and all((tmp_path / "anchors" / m["file"]).is_file() for m in manifest["images"])
    assert [(tmp_path / f"generated{r}.txt").read_text() for r in (0, 1)] == ["3", "0"]  # rank 0 made them all
    assert any(not torch.equal(p, before[n]) for n, p in module.backbone.named_parameters())  # rank 0's weights
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_the_noise_based_loss_targets_the_anchor_images_own_noise(tiny_spec):
    module = moved_student(tiny_spec, loss="noise", reduction="mean")
    (x0, noise), t = batch(3), torch.tensor([40, 600])
    c_a, c_t = module.backbone.encode_prompts(["a red square", "a red triangle"]).repeat_interleave(2, 0).chunk(2)
    with torch.no_grad():
        pred = module.backbone.unet(q_sample(module, x0, noise, t), t, encoder_hidden_states=c_t).sample
    loss = module.ablation_loss(x0, c_a, c_t, t, noise)[0]
    assert torch.allclose(loss, ((pred - noise) ** 2).mean(), rtol=1e-5)
    with pytest.raises(IGMUError, match="unknown ConceptAblation loss 'kl'"):
        make(tiny_spec, loss="kl")


def test_the_embedding_group_trains_only_the_target_words_rows(tiny_spec, tmp_path):
    module = make(tiny_spec, trainable=["embedding"], prior_weight=1.0, lr=1e-2, weight_decay=0.5)
    table = module.backbone.text_encoder.get_input_embeddings().weight
    name = next(n for n, p in module.backbone.named_parameters() if p is table)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    fit(module, anchors(tmp_path), steps=3)
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {name} and name.endswith("token_embedding.weight")
    moved = (table.detach() != before[name]).any(1)
    target_ids = module.backbone.tokenizer("triangle", add_special_tokens=False).input_ids
    # only "triangle"'s row learns; weight decay would have shrunk every other row
    assert moved.nonzero().flatten().tolist() == sorted(target_ids)


def test_a_resumed_run_trains_what_the_uninterrupted_one_does(tiny_spec, tmp_path):
    """The anchor generator (the loader's state) and the encoded latents (the module's) come back
    from the checkpoint: steps 3-4 after a resume move the weights exactly as without the stop."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(steps: int, ckpt_path=None, save: bool = False) -> dict:
        module = make(tiny_spec, prior_weight=1.0, lr=1e-2)
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1)
        Trainer(max_steps=steps, logger=False, enable_checkpointing=save, callbacks=[saver] if save else [],
                enable_progress_bar=False).fit(module, anchors(tmp_path, hflip=True), ckpt_path=ckpt_path)  # fmt: skip
        return {n: p.detach().clone() for n, p in module.backbone.named_parameters() if p.requires_grad}

    whole = run(4)
    first = run(2, save=True)
    resumed = run(4, ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert any(not torch.equal(first[n], whole[n]) for n in whole)
    assert all(torch.equal(resumed[n], whole[n]) for n in whole)
