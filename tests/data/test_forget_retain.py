import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from igmu_lightning.data import FolderForgetRetain, WorldForgetRetain
from igmu_lightning.errors import IGMUError


def make_folder(root, captions):
    root.mkdir()
    rows = []
    for i, caption in enumerate(captions):
        Image.fromarray(np.full((20, 24, 3), 10 * i, dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("target,word", [("object", "triangle"), ("style", "striped"), ("attribute", "hollow")])
def test_world_forget_captions_name_the_target_and_retain_captions_never_do(target, word):
    data = WorldForgetRetain(target, n_forget=12, n_retain=12, image_size=16, batch_size=4, steps_per_epoch=3)
    batches = list(data.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        assert set(batch) == {"forget", "retain"}
        for half in ("forget", "retain"):
            images = batch[half]["image"]
            assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
            assert 0 <= images.min() and images.max() <= 1 and len(batch[half]["prompt"]) == 4
        assert all(re.search(rf"\b{word}\b", p) for p in batch["forget"]["prompt"])
        assert not any(word in p for p in batch["retain"]["prompt"])


def test_each_half_is_an_independent_seeded_shuffle_per_epoch():
    def prompts(seed, epoch=0):
        loader = WorldForgetRetain(
            "object", n_forget=6, n_retain=6, image_size=8, batch_size=3, steps_per_epoch=2, seed=seed
        ).train_dataloader()
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        return [p for b in batches for p in b["forget"]["prompt"]], [p for b in batches for p in b["retain"]["prompt"]]

    forget, retain = prompts(0)
    assert prompts(0) == (forget, retain)  # seeded
    scenes = WorldForgetRetain("object", n_forget=6, n_retain=6, image_size=8, seed=0)
    scenes.setup("fit")
    assert sorted(forget) == sorted(scenes.forget_set[i]["prompt"] for i in range(6))  # one pass: each scene once
    assert sorted(retain) == sorted(scenes.retain_set[i]["prompt"] for i in range(6))
    assert forget != [scenes.forget_set[i]["prompt"] for i in range(6)]  # shuffled
    assert prompts(0, epoch=1) != (forget, retain)  # reshuffled every epoch
    sampler = scenes.train_dataloader().sampler
    pairs = list(sampler)
    assert [i for i, _ in pairs] != [j for _, j in pairs]  # the halves do not share one order


def test_folder_pairs_and_a_forget_only_module(tmp_path):
    forget = make_folder(tmp_path / "forget", ["a nude person"] * 3)
    retain = make_folder(tmp_path / "retain", ["a dressed person", "a tree", "a cat", "a dog", "a car"])
    data = FolderForgetRetain(str(forget), str(retain), image_size=16, batch_size=2, steps_per_epoch=4)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == 4 and batches[0]["forget"]["image"].shape == (2, 3, 16, 16)
    assert all(p == "a nude person" for b in batches for p in b["forget"]["prompt"])
    assert all(p != "a nude person" for b in batches for p in b["retain"]["prompt"])
    only = FolderForgetRetain(str(forget), image_size=16, batch_size=3, steps_per_epoch=1)
    only.setup("fit")
    assert set(next(iter(only.train_dataloader()))) == {"forget"}


def test_bad_folders_and_arguments_give_one_line_errors(tmp_path):
    good = make_folder(tmp_path / "good", ["a"])
    FolderForgetRetain(str(tmp_path / "none"), str(good))  # cheap: folders are read in setup()
    with pytest.raises(IGMUError, match="image folder '.*none' does not exist"):
        FolderForgetRetain(str(tmp_path / "none"), str(good)).setup("fit")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IGMUError, match="empty' has no metadata.jsonl"):
        FolderForgetRetain(str(good), str(empty)).setup("fit")
    (empty / "metadata.jsonl").write_text("\n")
    with pytest.raises(IGMUError, match="lists no images"):
        FolderForgetRetain(str(empty)).setup("fit")
    (good / "0.png").write_bytes(b"not a png")
    data = FolderForgetRetain(str(good), image_size=16)
    data.setup("fit")
    with pytest.raises(IGMUError, match=r"0\.png' cannot be read"):
        next(iter(data.train_dataloader()))
    with pytest.raises(IGMUError, match="unknown world target 'colour'"):
        WorldForgetRetain("colour")
    with pytest.raises(IGMUError, match="batch_size and steps_per_epoch must be >= 1"):
        WorldForgetRetain("object", batch_size=0)
