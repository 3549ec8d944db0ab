import json

import pytest
import torch

from igmu_lightning.data import CaptionedFolderData, load_image
from igmu_lightning.errors import IGMUError


def test_batches_are_images_in_unit_range_with_captions(captioned_folder):
    data = CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=3, val_fraction=0.25)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (3, 3, 16, 16) and 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert all(p.startswith("a photo of thing") for p in batch["prompt"])
    assert len(data.train_set) == 6 and len(data.val_set) == 2


def test_load_image_resizes_short_side_and_centre_crops(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", 10)
    assert image.shape == (3, 10, 10) and torch.allclose(image[0], torch.ones(10, 10))


def test_bad_folders_give_one_line_errors_naming_the_culprit(tmp_path, captioned_folder):
    with pytest.raises(IGMUError, match="does not exist"):
        CaptionedFolderData(str(tmp_path / "none")).setup("fit")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IGMUError, match="has no metadata.jsonl"):
        CaptionedFolderData(str(empty)).setup("fit")
    (empty / "metadata.jsonl").write_text("\n")
    with pytest.raises(IGMUError, match="lists no images"):
        CaptionedFolderData(str(empty)).setup("fit")
    (empty / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(IGMUError, match=r"metadata.jsonl:1 is not a JSON object"):
        CaptionedFolderData(str(empty)).setup("fit")
    (empty / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}))
    with pytest.raises(IGMUError, match="gone.png"):
        CaptionedFolderData(str(empty)).setup("fit")


def test_corrupt_image_names_the_file(captioned_folder):
    (captioned_folder / "3.png").write_bytes(b"not a png")
    data = CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=8)
    data.setup("fit")
    with pytest.raises(IGMUError, match=r"3\.png' cannot be read"):
        next(iter(data.train_dataloader()))
