import json

import numpy as np
import pytest
import torch

from igmu_lightning.errors import IGMUError
from igmu_lightning.world import FAMILIES, TARGETS, WorldData, WorldScenes
from igmu_lightning.world.concepts import MAIN_TEMPLATES, SYNONYMS
from igmu_lightning.world.export import export
from igmu_lightning.world.prompts import igmu_json, prompt_sets, strip_word


def test_scenes_are_deterministic_and_splits_differ():
    a, b = WorldScenes(50, "train", seed=3), WorldScenes(50, "train", seed=3)
    for i in (0, 17, 49):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["prompt"] == b[i]["prompt"]
    test = WorldScenes(50, "test", seed=3)
    assert not torch.equal(a[0]["image"], test[0]["image"])
    assert not torch.equal(a[0]["image"], WorldScenes(50, "train", seed=4)[0]["image"])


def test_data_module_batches_and_labels():
    data = WorldData(train_size=64, val_size=8, test_size=8, batch_size=16, family="shape")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["label"], batch["shape"]) and data.num_classes == 5
    for prompt, shape in zip(batch["prompt"], batch["shape"].tolist()):
        words = prompt.replace(",", "").split()
        assert FAMILIES["shape"][shape] in words or any(s in words for s in SYNONYMS["triangle"])


def test_synonyms_never_replace_a_main_name_in_main_templates():
    data = WorldScenes(3000, "train")
    synonyms = {s for syns in SYNONYMS.values() for s in syns}
    main, seen = 0, 0
    for i in range(3000):
        scene, caption = data.scene(i)[:2]
        words = set(caption.replace(",", "").split())
        seen += bool(words & synonyms)
        if any(caption == scene.caption(t) for t in MAIN_TEMPLATES):
            main += 1
            assert not words & synonyms, caption
    assert main > 1500 and seen > 50  # synonyms are learnt, but only from paraphrase templates


def test_prompt_sets_match_igmu_roles():
    sets = prompt_sets("object", n_per_class=8)
    assert all("triangle" in it.prompt and it.scene.shape == "triangle" for it in sets["forget"]["triangle"])
    assert set(sets["unrelated"]) == {"circle", "square", "cross"} and set(sets["near"]) == {"diamond"}
    assert all(any(s in it.prompt for s in SYNONYMS["triangle"]) for its in sets["synonym"].values() for it in its)
    style = prompt_sets("style", n_per_class=4)
    assert set(style["forget"]) == set(FAMILIES["shape"])  # one class per subject
    for forget, kept in zip(style["forget"]["cross"], style["remove_word"]["cross"]):
        assert "striped" in forget.prompt and "striped" not in kept.prompt
        assert kept.prompt == strip_word(forget.prompt, "striped") and kept.scene.shape == "cross"
    assert prompt_sets("attribute", 4, seed=1) == prompt_sets("attribute", 4, seed=1)


def test_strip_word_strips_once_and_whole_words_only():
    assert strip_word("a hollow red circle, hollow inside", "hollow") == "a red circle, inside"
    assert strip_word("a red triangle", "tri") == "a red triangle"
    prompt = "a striped background with a red circle"
    assert strip_word(prompt, "striped").count("background") == 1  # IGMU's bug would repeat the prompt


def test_igmu_json_has_igmu_layout():
    files = igmu_json("style", n_per_class=3)
    forgot, retain = files["forgot"]["style_striped"], files["retain"]["style_striped"]
    assert list(forgot) == list(retain) and all(len(v) == 3 for v in forgot.values())
    assert list(igmu_json("object", 3)["retain"]["object_triangle"]) == ["circle", "square", "cross"]


def test_export_writes_dataigm_layout_atomically(tmp_path):
    out = export(tmp_path / "world", train_per_class=2, test_per_class=1, prompts_per_class=2)
    for family, classes in FAMILIES.items():
        task = out / f"World_{family.capitalize()}"
        assert sorted(p.name for p in (task / "train").iterdir()) == sorted(classes)
        assert len(list((task / "test" / classes[0]).glob("*.png"))) == 1
    prompts = json.loads((out / "prompts" / "forgot.json").read_text())
    assert set(prompts) == {f"{t.category}_{t.word}" for t in TARGETS.values()}
    with pytest.raises(IGMUError, match="not empty"):
        export(out, 1, 1, 1)


def test_bad_world_arguments():
    with pytest.raises(IGMUError, match="unknown concept family 'shapes'"):
        WorldScenes(4, family="shapes")
    with pytest.raises(IGMUError, match="unknown split"):
        WorldScenes(4, split="dev")
    assert np.asarray(WorldScenes(1)[0]["image"]).max() <= 1
