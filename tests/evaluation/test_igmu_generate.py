import json

import pytest

from igmu_lightning.backbone import TinySD
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.igmu_generate import GenerateAndScore
from igmu_lightning.evaluation.judges import SavedDetector
from igmu_lightning.sampling import SamplerSettings
from tests.conftest import ROOT

SHAPE = str(ROOT / "checkpoints/world/detectors/shape")


def make(tmp_path, **kw):
    forget, retain = tmp_path / "forgot.json", tmp_path / "retain.json"
    forget.write_text(json.dumps({"attribute_hollow": {"circle": ["a hollow red circle", "a hollow blue circle"]}}))
    retain.write_text(json.dumps({"attribute_hollow": {"circle": ["a red circle", "a blue circle"]}}))
    args = dict(methods={"other": TinySD(seed=3, image_size=32)}, original=TinySD(seed=0, image_size=32),
                out=str(tmp_path / "out"), concept="Hollow", task="attribute_hollow", forget_prompts=str(forget),
                retain_prompts=str(retain), judge=SavedDetector(SHAPE), target="circle",
                sampler=SamplerSettings(steps=2), fid_features=SHAPE, distance_features=SHAPE)  # fmt: skip
    return GenerateAndScore(**{**args, **kw})


def test_generates_igmu_layout_and_scores_every_method(tmp_path):
    output = make(tmp_path).run(seed=0)
    root = tmp_path / "out" / "Hollow"
    assert sorted(p.name for p in (root / "forgot").iterdir()) == ["ORG", "other"]
    assert sorted(p.name for p in (root / "forgot/other/circle").iterdir()) == ["0_0_0.png", "0_1_0.png"]
    assert (root / "remove_word/ORG/circle/0_1_0.png").is_file() and not (root / "remove_word/other").exists()
    assert set(output.methods) == {"ORG", "other"}
    assert output.methods["other"]["aspects"]["preservation"]["fid_remove_word"]["n"] == 2
    # a second run finds every image on disk and regenerates nothing
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    make(tmp_path).run(seed=0)
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}


def test_bad_prompt_files(tmp_path):
    evaluation = make(tmp_path, task="nudity")
    with pytest.raises(IGMUError, match="has no task 'nudity'"):
        evaluation.run(seed=0)
    evaluation = make(tmp_path)
    (tmp_path / "forgot.json").write_text("{not json")
    with pytest.raises(IGMUError, match="is not valid JSON"):
        evaluation.run(seed=0)
