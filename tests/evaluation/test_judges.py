import pytest

from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.judges import NudeNetPerson, YOLOPerson


def test_yolo_person_slot_names_the_missing_weights(tmp_path):
    missing = tmp_path / "yolo_person.pt"
    with pytest.raises(IGMUError, match=r"YOLO person-detector weights '.*yolo_person.pt' do not exist: .*NudeNetPerson"):
        YOLOPerson(str(missing)).build()


def test_yolo_person_without_ultralytics_is_a_one_line_error(tmp_path):
    import importlib.util

    pytest.importorskip("nudenet")
    if importlib.util.find_spec("ultralytics") is not None:
        pytest.skip("ultralytics is installed: the import error cannot happen")
    weights = tmp_path / "yolo_person.pt"
    weights.write_bytes(b"not read: the import fails first")
    with pytest.raises(IGMUError, match="needs the 'ultralytics' package: pip install ultralytics"):
        YOLOPerson(str(weights)).build()


def test_nudenet_person_judge_builds_the_person_detector():
    detector = NudeNetPerson(classes=["FACE_FEMALE"], threshold=0.3).build()
    assert detector.class_names == ["absent", "present"] and detector.classes == {"FACE_FEMALE"} and detector.threshold == 0.3
