import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer

from igmu_lightning.algorithms import MACE
from igmu_lightning.algorithms.mace import importance_weights, masked_attention_norm, shared_positions
from igmu_lightning.backbone import Pretrained
from igmu_lightning.backbone.delta import DELTA_FILE
from igmu_lightning.data import WorldConceptImages
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.adapters import LoRA, tuner_layers
from igmu_lightning.world.concepts import Scene
from igmu_lightning.world.render import render, render_with_mask

# CLIP BPE: "a red triangle on a plain background" is BOS a red triangle on a plain background EOS
# (9 tokens, "triangle" at 3); with "a person" (2 tokens) in its place, 10 tokens.
TEMPLATE = "a red {} on a plain background"


def attn2_names(module):
    return [n for n, _ in module.backbone.unet.named_modules() if n.endswith("attn2")]


def base_weights(module):
    """{projection name: its base weight}, to_v of every attn2 then to_k (the official cache order)."""
    params = dict(module.backbone.unet.named_parameters())
    names = [f"{a}.{p}" for p in ("to_v", "to_k") for a in attn2_names(module)]
    return {n: params.get(f"{n}.base_layer.weight", params.get(f"{n}.weight")).detach().clone().double() for n in names}


def embeddings(module, texts):
    ids = module.backbone.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return module.backbone.text_encoder(ids)[0].double()


def least_squares(w0, lam, keys, targets):
    """argmin_W lam ||W - w0||^2 + sum_i ||W k_i - v_i||^2 by torch.linalg.lstsq on the stacked system."""
    a = torch.cat([lam**0.5 * torch.eye(w0.shape[1], dtype=torch.float64), keys])
    b = torch.cat([lam**0.5 * w0.T, targets])
    return torch.linalg.lstsq(a, b).solution.T


def test_shared_positions_align_prefix_suffix_and_padding():
    old = [49406, 320, 736, 14615, 525, 320, 10709, 5994, 49407]
    new = [49406, 320, 736, 320, 2533, 525, 320, 10709, 5994, 49407]
    po, pn = shared_positions(old, new, 77)
    assert po == [0, 1, 2, *range(4, 76)] and pn == [0, 1, 2, *range(5, 77)]  # 76 has no partner in new
    assert shared_positions(new, old, 77) == (pn, po)
    assert shared_positions(old, old, 77) == (list(range(77)), list(range(77)))


def test_refinement_is_the_least_squares_map_of_the_shared_tokens(tiny_spec):
    module = MACE(tiny_spec, concepts=["triangle"], mapping=["a person"], templates=[TEMPLATE, "a {} shape"], lam=0.7)
    tok = module.backbone.tokenizer
    assert len(tok("triangle").input_ids) == 3 and len(tok("a person").input_ids) == 4
    before = base_weights(module)
    module.refine()
    after = base_weights(module)
    old = embeddings(module, ["a red triangle on a plain background", "a triangle shape"])
    new = embeddings(module, ["a red a person on a plain background", "a a person shape"])
    # "a triangle shape": BOS a triangle shape EOS; "a a person shape": BOS a a person shape EOS
    pairs = [([0, 1, 2, *range(4, 76)], [0, 1, 2, *range(5, 77)]), ([0, 1, *range(3, 76)], [0, 1, *range(4, 77)])]
    keys = torch.cat([old[j, po] for j, (po, _) in enumerate(pairs)])
    mapped = torch.cat([new[j, pn] for j, (_, pn) in enumerate(pairs)])
    assert len(after) == 8
    for name, w0 in before.items():
        expected = least_squares(w0, 0.7, keys, mapped @ w0.T)
        assert torch.allclose(after[name], expected.float().double(), atol=1e-5), name
        assert not torch.allclose(after[name], w0, atol=1e-4)


def test_preservation_enters_the_refinement_with_the_scale_squared_and_fusion_with_it_once(tiny_spec, tmp_path):
    kw = dict(concepts=["triangle"], mapping=["square"], templates=[TEMPLATE], lam=0.5)
    preserve = ["a blue circle", "a green cross on a dotted background"]
    module = MACE(tiny_spec, **kw, train_preserve_scale=2.0, prior_prompts=preserve)
    before = base_weights(module)
    module.refine()
    after = base_weights(module)
    old, new = embeddings(module, [TEMPLATE.format("triangle")]), embeddings(module, [TEMPLATE.format("square")])
    shared = [0, 1, 2, *range(4, 77)]  # one token each: every position but the concept's
    e = embeddings(module, preserve).flatten(0, 1)
    for name, w0 in before.items():
        keys = torch.cat([old[0, shared], 2.0 * e])  # weight s^2 = 4 on ||W e - W0 e||^2
        expected = least_squares(w0, 0.5, keys, torch.cat([new[0, shared], 2.0 * e]) @ w0.T)
        assert torch.allclose(after[name], expected, atol=1e-5), name

    # the same cache as an official file: {i}_for_mat1 = sum (W0 e) e^T, {i}_for_mat2 = sum e e^T,
    # i over to_v of every attn2 layer, then to_k
    cache = {}
    for i, w0 in enumerate(before.values()):
        cache[f"{i}_for_mat1"], cache[f"{i}_for_mat2"] = w0 @ e.T @ e, e.T @ e
    torch.save(cache, tmp_path / "cache.pt")
    from_file = MACE(tiny_spec, **kw, train_preserve_scale=2.0, prior_cache=str(tmp_path / "cache.pt"))
    from_file.refine()
    for name, weight in base_weights(from_file).items():
        assert torch.allclose(weight, after[name], atol=1e-5), name
    del cache["7_for_mat2"]
    torch.save(cache, tmp_path / "short.pt")
    with pytest.raises(IGMUError, match="lacks 7_for_mat2"):
        MACE(tiny_spec, **kw, prior_cache=str(tmp_path / "short.pt")).refine()


def test_attention_loss_is_the_sum_over_layers_of_the_masked_norms():
    g = torch.Generator().manual_seed(0)
    big = torch.rand(1, 2, 16, 5, generator=g).softmax(-1)  # (B, heads, 4x4 pixels, 5 tokens)
    small = torch.rand(1, 2, 4, 5, generator=g).softmax(-1)  # 2x2 pixels
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 0:4, 0:2] = 1.0  # nearest to 4x4 reads pixels (2i, 2j): rows 0-1, column 0
    mask[0, 0, 4, 4] = 0.6  # (2, 2) on the 4x4 map; (1, 1) on the 2x2 map
    positions = torch.tensor([[False, True, False, True, False]])
    expected = 0.0
    for probs, pixels in ((big, [0, 4, 10]), (small, [0, 3])):  # row-major: (0,0), (1,0), (2,2) / (0,0), (1,1)
        picked = [probs[0, h, p, c] for h in range(2) for p in pixels for c in (1, 3)]
        expected += sum(v**2 for v in picked) ** 0.5
    loss = masked_attention_norm([big, small], positions, mask)
    assert torch.allclose(loss, expected.detach(), rtol=1e-6)
    assert not torch.allclose(loss, torch.cat([big[:, :, [0, 4, 10]], small[:, :, [0, 3]]], 2)[..., [1, 3]].norm())


def test_concept_positions_and_pooler(tiny_spec):
    module = MACE(tiny_spec, concepts=["triangle"], mapping=["square"], pooler="none")
    assert module.concept_mask([TEMPLATE.format("triangle")], 0)[0].nonzero().flatten().tolist() == [3]
    module.pooler = "all"  # the official use_pooler on SD v1.x: the EOS (8) and every padding token
    assert module.concept_mask([TEMPLATE.format("triangle")], 0)[0].nonzero().flatten().tolist() == [3, *range(8, 77)]
    with pytest.raises(IGMUError, match="does not hold the concept 'triangle'"):
        module.concept_mask(["a red square"], 0)


def test_importance_sampling_density():
    t = np.arange(1000)
    f = 1 / (1 + np.exp(-0.05 * (t - 200))) - 1 / (1 + np.exp(-0.05 * (t - 400)))
    assert torch.allclose(importance_weights(1000), torch.from_numpy(f / f.sum()))
    assert 290 <= int(importance_weights(1000).argmax()) <= 310


def test_fusion_is_the_closed_form_over_all_tokens_and_removes_the_loras(tiny_spec):
    module = MACE(tiny_spec, concepts=["triangle", "striped"], mapping=["square", "plain"], lam=3.0,
                  templates=[TEMPLATE, "a {} thing"])  # fmt: skip
    g = torch.Generator().manual_seed(1)
    deltas = {}
    for name, layer in module.backbone.unet.named_modules():
        if hasattr(layer, "lora_A") and "mace_0" in layer.lora_A:
            for i in range(2):
                a, b = layer.lora_A[f"mace_{i}"].weight, layer.lora_B[f"mace_{i}"].weight
                assert a.shape[0] == 1 and torch.count_nonzero(b) == 0  # rank 1, B starts at zero
                b.data = torch.randn(b.shape, generator=g) * 0.1
                deltas[(name, i)] = (b @ a).detach().double()  # alpha = rank: scale 1
    assert len(deltas) == 16
    a_values = torch.cat(
        [layer.lora_A[a].weight.flatten() for layer in tuner_layers(module.backbone.unet) for a in layer.lora_A]
    )
    assert 0.85 < float(a_values.std()) < 1.15  # diffusers' LoRALinearLayer: A ~ N(0, 1/rank^2), rank 1
    before = base_weights(module)
    module.fuse()
    after = base_weights(module)
    texts = [[TEMPLATE.format(c), f"a {c} thing"] for c in ("triangle", "striped")]
    e = [embeddings(module, t).flatten(0, 1) for t in texts]  # all 77 tokens of each prompt
    for name, w in before.items():
        targets = torch.cat([e[i] @ (w + deltas[(name, i)]).T for i in range(2)])
        assert torch.allclose(after[name], least_squares(w, 3.0, torch.cat(e), targets), atol=1e-5), name
    unet = module.backbone.unet
    assert module.backbone.adapters == [] and not any("lora" in n for n, _ in unet.named_parameters())
    assert type(unet.get_submodule(f"{attn2_names(module)[0]}.to_k")) is torch.nn.Linear
    assert sorted(module.delta_tensors()) == sorted(f"unet.{n}.weight" for n in before)


class LoraNorms(Callback):
    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        b = {
            i: sum(p.norm().item() for n, p in module.backbone.unet.named_parameters() if f"lora_B.mace_{i}" in n)
            for i in range(2)
        }
        self.norms.append((int(batch["concept"][0]), b[0], b[1]))


def test_fit_trains_one_lora_per_concept_in_turn_and_exports_the_fused_model(tiny_spec, tmp_path):
    module = MACE(tiny_spec, concepts=["triangle", "striped"], mapping=["square", "plain"], concept_types=["object", "style"],
                  templates=[TEMPLATE, "a picture of a {}"], lam=10.0, lr=1e-2, export_dir=str(tmp_path / "out"))  # fmt: skip
    before = base_weights(module)
    data = WorldConceptImages(["triangle", "striped"], n_images=2, steps_per_concept=3, image_size=16)
    norms = LoraNorms()
    trainer = Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[norms])  # fmt: skip
    trainer.fit(module, data)
    assert [c for c, _, _ in norms.norms] == [0, 0, 0, 1, 1, 1]
    assert norms.norms[2][1] > 0 and norms.norms[2][2] == 0  # concept 0's block trains its LoRA only
    assert norms.norms[5][1] == norms.norms[2][1] and norms.norms[5][2] > 0
    exported = Pretrained(str(tmp_path / "out")).build()
    params = dict(exported.unet.named_parameters())
    for name, w in before.items():
        assert not torch.allclose(params[f"{name}.weight"].double(), w, atol=1e-6)
        assert torch.equal(params[f"{name}.weight"], dict(module.backbone.unet.named_parameters())[f"{name}.weight"])
    assert (tmp_path / "out" / DELTA_FILE).is_file() and not (tmp_path / "out" / "lora").exists()


def test_world_masks_cover_the_shape_and_leave_the_image_unchanged():
    scene = Scene("triangle", "red", "plain", "filled")
    image, mask = render_with_mask(scene, 32, np.random.default_rng(3))
    assert np.array_equal(image, render(scene, 32, np.random.default_rng(3)))
    inside, outside = image[mask == 1.0], image[mask == 0.0]
    assert len(inside) > 50 and len(outside) > 300
    assert (inside[:, 0] > 150).all() and (inside[:, 1] < 100).all()  # the red shape
    assert (outside[:, 1] > 150).all()  # the pale background


def test_bad_configurations_are_refused(tiny_spec):
    with pytest.raises(IGMUError, match="2 concepts, 3 mappings"):
        MACE(tiny_spec, concepts=["triangle", "striped"], mapping=["a", "b", "c"])
    with pytest.raises(IGMUError, match="needs a '{}'"):
        MACE(tiny_spec, concepts=["triangle"], mapping=["square"], templates=["a photo"])
    with pytest.raises(IGMUError, match="object or style"):
        MACE(tiny_spec, concepts=["triangle"], mapping=["square"], concept_types=["colour"])
    with pytest.raises(IGMUError, match="LoRA init 'xavier'"):
        LoRA(init="xavier")
    with pytest.raises(IGMUError, match="not world words"):
        WorldConceptImages(["trigon"])
    module = MACE(tiny_spec, concepts=["triangle", "striped"], mapping=["square"], templates=[TEMPLATE])
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(IGMUError, match="serves 1 concepts but MACE erases 2"):
        trainer.fit(module, WorldConceptImages(["triangle"], n_images=1, steps_per_concept=1, image_size=16))
    module = MACE(tiny_spec, concepts=["triangle"], mapping=["square"], templates=[TEMPLATE])
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(IGMUError, match="max_steps is 1 but MACE trains 1 concept.s. x 2 steps"):
        trainer.fit(module, WorldConceptImages(["triangle"], n_images=1, steps_per_concept=2, image_size=16))
