import numpy as np
import pytest
import torch
from PIL import Image

from igmu_lightning.data import FolderConceptImages, WorldConceptImages
from igmu_lightning.errors import IGMUError


def save(path, value, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(path)


def test_folder_concepts_come_in_turn_with_their_masks_paired_by_name(tmp_path):
    for i, value in enumerate((10, 200)):
        save(tmp_path / "a" / f"img_{i}.png", value)
        save(tmp_path / "a mask" / f"img_{i}_mask.png", 255 * i, "L")  # mask i pairs with image i
    save(tmp_path / "b" / "x.jpg", 90)
    data = FolderConceptImages([str(tmp_path / "a"), str(tmp_path / "b")], [str(tmp_path / "a mask"), None],
                               steps_per_concept=4, image_size=8)  # fmt: skip
    batches = list(data.train_dataloader())
    assert [int(b["concept"]) for b in batches] == [0, 0, 0, 0, 1, 1, 1, 1]
    for b in batches[:4]:  # the dark image has the empty mask, the bright one the full mask
        assert float(b["mask"].mean()) == (1.0 if float(b["image"].mean()) > 0.5 else 0.0)
    assert all(torch.equal(b["mask"], torch.ones(1, 1, 8, 8)) for b in batches[4:])  # no mask folder: whole image
    save(tmp_path / "a mask" / "img_2_mask.png", 0, "L")
    with pytest.raises(IGMUError, match="holds 3 masks for 2 images"):
        FolderConceptImages(
            [str(tmp_path / "a")], [str(tmp_path / "a mask")], steps_per_concept=1, image_size=8
        ).setup()
    with pytest.raises(IGMUError, match="2 image folders but 1 mask folders"):
        FolderConceptImages([str(tmp_path / "a"), str(tmp_path / "b")], [None])


def test_world_concept_images_show_the_concept():
    data = WorldConceptImages(["triangle", "striped"], n_images=3, steps_per_concept=2, image_size=32)
    batches = list(data.train_dataloader())
    assert [int(b["concept"]) for b in batches] == [0, 0, 1, 1]
    assert batches[0]["image"].shape == (1, 3, 32, 32) and batches[0]["mask"].shape == (1, 1, 32, 32)
    assert 0.1 < float((batches[0]["mask"] > 0.5).float().mean()) < 0.6  # a shape, not the whole image
