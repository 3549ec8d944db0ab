import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.data import LabelledFolderData
from igmu_lightning.detectors import ImageClassifier, TimmFeatures, load_detector, save_detector
from igmu_lightning.detectors.heads import GatedHead
from igmu_lightning.detectors.nudenet import NudeNetDetector
from igmu_lightning.errors import IGMUError
from igmu_lightning.world.export import export

CLASSES = ["circle", "square", "triangle", "cross", "diamond"]


@pytest.fixture(scope="module")
def world_folder(tmp_path_factory):
    return export(tmp_path_factory.mktemp("w") / "world", train_per_class=24, test_per_class=8, prompts_per_class=1)


def test_training_step_lowers_the_loss(world_folder):
    data = LabelledFolderData(str(world_folder), "World_Shape", class_names=CLASSES, batch_size=40, val_fraction=0.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    model = ImageClassifier(CLASSES, TimmFeatures("test_resnet", input_size=64), lr=3e-3)
    def loss() -> torch.Tensor:  # train mode: batch-norm uses the batch's statistics both times
        return torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])

    model.train()
    with torch.no_grad():
        before = loss().item()
    optimizer = model.configure_optimizers()
    for _ in range(15):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        assert loss().item() < 0.5 * before


def test_fit_test_save_and_load_round_trip(world_folder, tmp_path):
    data = LabelledFolderData(str(world_folder), "World_Shape", class_names=CLASSES, batch_size=32)
    model = ImageClassifier(CLASSES, TimmFeatures("test_resnet", input_size=32), export_dir=str(tmp_path / "det"))
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, data)
    metrics = trainer.test(model, data, verbose=False)[0]
    assert {"test/accuracy", "test/f1", "test/auroc"} <= set(metrics)
    loaded = load_detector(tmp_path / "det")
    images = next(iter(data.test_dataloader()))["image"]
    assert torch.allclose(loaded.predict_proba(images), model.eval().predict_proba(images), atol=1e-6)
    assert loaded.class_names == CLASSES


def test_class_mismatch_and_bad_folders_are_refused(world_folder, tmp_path):
    data = LabelledFolderData(str(world_folder), "World_Colour")
    model = ImageClassifier(CLASSES, TimmFeatures("test_resnet", input_size=32))
    with pytest.raises(IGMUError, match="differ from the detector's"):
        Trainer(max_steps=1, logger=False, enable_progress_bar=False).fit(model, data)
    with pytest.raises(IGMUError, match="does not exist"):
        LabelledFolderData(str(world_folder), "World_Nope")
    with pytest.raises(IGMUError, match="World_Nope' does not exist"):
        LabelledFolderData(str(world_folder), "World_Nope", class_names=["a", "b"]).setup("fit")
    with pytest.raises(IGMUError, match="not a detector folder"):
        load_detector(tmp_path)
    with pytest.raises(IGMUError, match="timm has no model 'resnet_typo'"):
        TimmFeatures("resnet_typo")


def test_gated_head_shapes():
    head = GatedHead(512, 2)
    assert head(torch.randn(4, 512)).shape == (4, 2)


def test_nudenet_wrapper_thresholds_the_chosen_classes(monkeypatch):
    detector = NudeNetDetector(threshold=0.45)
    found = [[{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5}], [{"class": "FEET_EXPOSED", "score": 0.9}],
             [{"class": "BUTTOCKS_EXPOSED", "score": 0.44}], []]  # fmt: skip
    monkeypatch.setattr(detector, "detections", lambda images: found)
    assert detector.predict(torch.zeros(4, 3, 8, 8)).tolist() == [1, 0, 0, 0]
    assert NudeNetDetector(classes=["FEET_EXPOSED"]).class_names == ["safe", "nude"]


def test_nudenet_runs_offline_on_real_pixels():
    """The real ONNX detector must fire: on a real photo it finds the face (FACE_FEMALE, 0.74), so a
    judge counting that class flags it; noise shows no face and no body part."""
    import numpy as np
    from PIL import Image

    from tests.conftest import ROOT

    photo = np.asarray(Image.open(ROOT / "tests/assets/astronaut_128.png").convert("RGB"), dtype=np.float32) / 255
    images = torch.cat([torch.from_numpy(photo).permute(2, 0, 1)[None], torch.rand(1, 3, 128, 128)])
    assert NudeNetDetector(classes=["FACE_FEMALE"]).predict(images).tolist() == [1, 0]
    assert NudeNetDetector().predict(images).tolist() == [0, 0]  # no exposed body part in either


def test_clip_vision_backbone_with_igmu_gated_head(tmp_path):
    """IGMU's SD-scale detector: frozen CLIP image features -> gated head (a tiny random CLIP here)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from igmu_lightning.detectors import ClipVisionFeatures

    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, projection_dim=512)  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    model = ImageClassifier(["safe", "nude"], ClipVisionFeatures(str(tmp_path / "clip")), head="gated", freeze_encoder=True)
    assert isinstance(model.head, GatedHead) and model.features.num_features == 512
    assert not any(p.requires_grad for p in model.features.parameters())
    images, labels = torch.rand(4, 3, 48, 48), torch.tensor([0, 1, 0, 1])
    loss = model.training_step({"image": images, "label": labels}, 0)
    loss.backward()
    assert model.head.gate[0].weight.grad is not None
    save_detector(model, tmp_path / "det")
    assert torch.allclose(load_detector(tmp_path / "det").predict_proba(images), model.eval().predict_proba(images), atol=1e-6)
