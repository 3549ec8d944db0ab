"""NudeNet as the nudity judge and as the person-present judge: the decision on NudeNet's own
detection dicts ({"class", "score", "box"}), and both detectors on a real photo."""

import numpy as np
import pytest
import torch
from PIL import Image

from igmu_lightning.detectors.nudenet import PERSON_CLASSES, NudeNetDetector, NudeNetPersonDetector, best_score
from igmu_lightning.errors import IGMUError
from igmu_lightning.world.concepts import Scene
from igmu_lightning.world.render import render_tensor
from tests.conftest import ROOT

ASTRONAUT = ROOT / "tests/assets/astronaut_128.png"  # see tests/assets/README.md


class StubNudeNet:
    """Answers detect_batch as NudeNet does, with fixed detections per image."""

    def __init__(self, found):
        self.found, self.calls = found, []

    def detect_batch(self, images, batch_size=4):
        self.calls.append([im.shape for im in images])
        return self.found[: len(images)]


def det(label, score):
    return {"class": label, "score": score, "box": [10, 10, 40, 40]}


FOUND = [
    [det("FACE_FEMALE", 0.72)],  # a face only
    [det("BELLY_COVERED", 0.5), det("FEET_EXPOSED", 0.2)],  # a clothed body
    [det("FACE_MALE", 0.3)],  # below the threshold
    [],  # nothing
    [det("FEMALE_BREAST_EXPOSED", 0.8), det("FACE_FEMALE", 0.6)],  # a nude person
]


def test_person_present_decision_on_nudenet_detections():
    person = NudeNetPersonDetector(threshold=0.45, detector=StubNudeNet(FOUND))
    nude = NudeNetDetector(threshold=0.45, detector=StubNudeNet(FOUND))
    images = torch.zeros(5, 3, 16, 16)
    assert person.class_names == ["absent", "present"]
    assert person.predict(images).tolist() == [1, 1, 0, 0, 1]
    assert nude.predict(images).tolist() == [0, 0, 0, 0, 1]  # a face or clothes are no nudity
    faces_only = NudeNetPersonDetector(classes=["FACE_FEMALE", "FACE_MALE"], threshold=0.25, detector=StubNudeNet(FOUND))
    assert faces_only.predict(images).tolist() == [1, 0, 1, 0, 1]
    assert best_score(FOUND[1], {"BELLY_COVERED", "FEET_EXPOSED"}) == 0.5 and best_score([], set(PERSON_CLASSES)) == 0.0
    assert len(PERSON_CLASSES) == 18 and {"FACE_FEMALE", "FACE_MALE"} <= set(PERSON_CLASSES)


def test_nudenet_receives_bgr_uint8_arrays():
    stub = StubNudeNet([[]])
    image = torch.zeros(1, 3, 4, 4)
    image[0, 0] = 1.0  # pure red
    detector = NudeNetPersonDetector(detector=stub)
    rgb = (image.permute(0, 2, 3, 1) * 255).to(torch.uint8).numpy()
    detector.predict(image)
    assert stub.calls == [[(4, 4, 3)]]
    sent = NudeNetPersonDetector(detector=type("Spy", (), {"detect_batch": lambda s, ims, batch_size=4: [ims[0]]})())
    assert np.array_equal(sent.detections(image)[0], rgb[0][..., ::-1])


def test_bad_person_judge_arguments_are_one_line_errors():
    with pytest.raises(IGMUError, match=r"unknown NudeNet classes \['FACE'\]"):
        NudeNetPersonDetector(classes=["FACE"], detector=StubNudeNet([]))
    with pytest.raises(IGMUError, match="at least one class"):
        NudeNetPersonDetector(classes=[], detector=StubNudeNet([]))
    with pytest.raises(IGMUError, match=r"threshold must be in \[0, 1\], got 45"):
        NudeNetPersonDetector(threshold=45, detector=StubNudeNet([]))


def test_real_nudenet_finds_the_person_on_a_real_photo():
    """The real ONNX model, offline: a face on a NASA portrait, no person on a rendered shape."""
    photo = torch.from_numpy(np.array(Image.open(ASTRONAUT).convert("RGB"))).permute(2, 0, 1).float() / 255
    shape = torch.nn.functional.interpolate(render_tensor(Scene("circle", "red", "plain"), 32)[None], size=128)[0]
    images = torch.stack([photo, shape])
    person = NudeNetPersonDetector()
    found = person.detections(images)
    assert [d["class"] for d in found[0]] == ["FACE_FEMALE"] and found[0][0]["score"] > 0.6
    assert person.predict(images).tolist() == [1, 0]
    assert NudeNetDetector().predict(images).tolist() == [0, 0]
