"""Concept inversion: the placeholder's embedding is the only thing learned, the loss it optimises
falls, the model is left as it was, and the batched result equals prompts encoded one at a time."""

import copy

import pytest
import torch

from igmu_lightning.attacks import AttackContext
from igmu_lightning.attacks.concept_images import diffusion_loss, load_concept_images, world_concept_images
from igmu_lightning.attacks.concept_inversion import ConceptInversion, Inversion
from igmu_lightning.errors import IGMUError


@pytest.fixture(scope="module")
def model(tiny_spec):
    return tiny_spec.build().eval()


def attack(**kw):
    settings = {"world_target": "object", "preset": "quick", "steps": 30, "batch_size": 8, "n_images": 8, "lr": 0.05}
    return ConceptInversion(**{**settings, **kw})


def fixed_loss(model, inversion: Inversion, images, captions) -> float:
    """L_DM over fixed draws (the same noise and timesteps for every embedding compared)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        texts = [c.format(inversion.placeholder) for c in captions] * 4
        cond = ConceptInversion.encode(model, texts, inversion)
        return float(diffusion_loss(model, images.repeat(4, 1, 1, 1), cond, g))


def test_loss_falls_and_only_the_placeholder_moves(model):
    hashes, vocab = model.hashes(), len(model.tokenizer)
    ci = attack()
    images, captions = ci.training_data(model, ["triangle"], seed=0)
    assert images.shape == (8, 3, 16, 16) and all("{}" in c and "triangle" not in c for c in captions)
    inv = ci.invert(model, images, captions, ["triangle"], seed=0)
    start = Inversion(inv.placeholder, inv.token_id, inv.initializer_id,
                      model.text_encoder.get_input_embeddings().weight[inv.initializer_id].detach().clone(), inv.tokenizer, [])  # fmt: skip
    assert not torch.equal(inv.embedding, start.embedding)
    assert fixed_loss(model, inv, images, captions) < fixed_loss(model, start, images, captions)
    # the model is untouched: weights, token table and tokenizer (the placeholder lives in a copy)
    assert model.hashes() == hashes and len(model.tokenizer) == vocab and len(inv.tokenizer) == vocab + 1
    # in a prompt's token embeddings only the placeholder's row differs from the model's own lookup
    prompt = "a red <c*> on a plain background"
    ids = inv.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    at = ids == inv.token_id
    assert int(at.sum()) == 1
    plain = model.token_embeddings(torch.where(at, inv.initializer_id, ids))
    seen, encode = {}, model.encode_embeddings
    model.encode_embeddings = lambda embeds, ids=None: encode(seen.setdefault("embeds", embeds), ids)
    try:
        with torch.no_grad():
            ConceptInversion.encode(model, [prompt], inv)
    finally:
        del model.encode_embeddings
    rows_changed = (seen["embeds"][0] - plain[0]).abs().amax(-1) > 0
    assert rows_changed.tolist() == at[0].tolist()


def test_run_replaces_the_word_and_batches_like_one_at_a_time(model):
    hashes = model.hashes()
    prompts = ["a red triangle on a plain background", "a blue circle", "a picture of a green triangle, dotted background"]
    ci = attack(steps=5)
    result = ci.run(AttackContext(model, prompts, [0, 1, 2], concept="triangle"))
    assert result.prompts == ["a red <c*> on a plain background", "a blue circle", "a picture of a green <c*>, dotted background"]
    assert [d["placeholder_used"] for d in result.details] == [True, False, True]
    assert result.embeddings.shape == (3, 77, model.text_encoder.config.hidden_size) and result.seconds > 0
    assert model.hashes() == hashes
    with torch.no_grad():
        for i, p in enumerate(result.prompts):
            alone = ConceptInversion.encode(model, [p], ci.last)
            torch.testing.assert_close(result.embeddings[i : i + 1], alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.embeddings[1:2], model.encode_prompts(["a blue circle"]))  # no placeholder: as encoded


def test_inversion_is_rerunnable_and_settings_are_checked(model):
    a = attack(steps=3).invert(model, *attack().training_data(model, ["triangle"], 0), ["triangle"], seed=5)
    b = attack(steps=3).invert(model, *attack().training_data(model, ["triangle"], 0), ["triangle"], seed=5)
    assert torch.equal(a.embedding, b.embedding)
    with pytest.raises(IGMUError, match="needs images of the concept"):
        ConceptInversion()
    with pytest.raises(IGMUError, match="no \\{\\} where the placeholder goes"):
        ConceptInversion(world_target="object", templates=["a photo"])
    with pytest.raises(IGMUError, match="already a token"):
        attack(placeholder="triangle", steps=1).invert(model, *attack().training_data(model, ["triangle"], 0), ["triangle"])
    with pytest.raises(IGMUError, match="single token"):
        attack(initializer="a photo", steps=1).invert(model, *attack().training_data(model, ["triangle"], 0), ["triangle"])


def test_images_from_a_tensor_with_templates(model):
    images, _, _ = world_concept_images("style", 4, 24, seed=1)  # resized to the model's 16 px
    ci = ConceptInversion(images=images, templates="style", preset="quick", steps=2, batch_size=2)
    got, captions = ci.training_data(model, ["striped"], 0)
    assert got.shape == (4, 3, 16, 16) and captions is None
    result = ci.run(AttackContext(copy.deepcopy(model), ["a circle on a striped background"], [0], concept="striped"))
    assert result.prompts == ["a circle on a <c*> background"]
    assert ci.to_config()["init_args"]["images"] == "tensor (4, 3, 24, 24)"


def test_images_from_a_folder(tmp_path):
    from tests.conftest import draw

    for i in range(3):
        draw(tmp_path / "imgs" / f"{i}.png", "triangle", seed=i)  # 32 px files
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    images = load_concept_images(tmp_path / "imgs", 16, limit=2)
    assert images.shape == (2, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1
    with pytest.raises(IGMUError, match="holds no image"):
        load_concept_images(tmp_path, 16)
    with pytest.raises(IGMUError, match="does not exist"):
        load_concept_images(tmp_path / "nope", 16)
